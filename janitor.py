"""CrowdSky's janitor: keeps the buffer and the queue tidy on a schedule.

    python janitor.py          run the scheduler until SIGTERM / Ctrl-C
    python janitor.py --once   run every task once (for cron) and exit

Tasks: expire upload sessions left unfinished (and delete their raws), return jobs whose stacker
died to the queue, and, when ``CROWDSKY_STACK_EVERY_MINUTES`` is set, run a stacking pass for
deployments without a long-running stacker.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from apscheduler.schedulers.blocking import BlockingScheduler

from lib import config, janitor_tasks, worker
from lib.db import connect
from lib.storage import open_storage

log = logging.getLogger("crowdsky.janitor")


def tasks(settings):
    """(name, function, every N seconds) for each task, bound to this deployment's services."""
    db = connect(settings.database_url)
    buffer = open_storage(settings.buffer_url, settings.buffer_credentials, role="buffer")
    found = [
        ("expire-sessions", lambda: janitor_tasks.expire_sessions(db, buffer, settings), 600),
        ("requeue-dead-leases", lambda: janitor_tasks.requeue_dead_leases(db),
         max(10, settings.lease_seconds // 2)),
    ]
    if settings.stack_every_minutes > 0:
        archive = open_storage(settings.archive_url, settings.archive_credentials, role="archive")
        source = worker.DirectSource(settings, db, buffer, archive)
        found.append(("stacking-pass", lambda: _stacking_pass(source, settings),
                      settings.stack_every_minutes * 60))
    return found


def _stacking_pass(source, settings) -> int:
    """Stack every job that is pending now, one after another."""
    done = 0
    while worker.run_once(source, worker.worker_name(), lease_seconds=settings.lease_seconds):
        done += 1
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="CrowdSky janitor")
    parser.add_argument("--once", action="store_true", help="run every task once and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = config.load()
    jobs = tasks(settings)
    if args.once:
        for name, run, _ in jobs:
            log.info("%s: %s", name, run())
        return 0
    scheduler = BlockingScheduler(timezone="UTC")
    for name, run, seconds in jobs:
        scheduler.add_job(run, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=True))
    log.info("janitor running: %s", ", ".join(name for name, _, _ in jobs))
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
