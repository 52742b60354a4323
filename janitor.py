"""CrowdSky's janitor: keeps the buffer and the queue tidy on a schedule.

    python janitor.py          run the scheduler until SIGTERM / Ctrl-C
    python janitor.py --once   run every task once (for cron) and exit

Tasks: expire upload sessions left unfinished (and delete their raws), return jobs whose stacker
died to the queue, drop raws of failed jobs nobody retried, reconcile rows with stored objects, prune
cached thumbnails no stack shows, forget stackers silent for a day, and, when ``CROWDSKY_STACK_EVERY_MINUTES`` is set, run a stacking pass for
deployments without a long-running stacker.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from apscheduler.schedulers.blocking import BlockingScheduler

from lib import config, janitor_tasks, logs, queue, worker
from lib.db import release
from lib.services import Services

log = logging.getLogger("crowdsky.janitor")

# Set by SIGTERM / Ctrl-C: a stacking pass gives its job back and stops, no new task starts.
stopping = threading.Event()


def tasks(svc) -> list[tuple[str, object, int]]:
    """(name, function, every N seconds) for each task of this deployment."""
    settings = svc.settings
    found = [
        ("expire-sessions", lambda: janitor_tasks.expire_sessions(svc), 600),
        ("requeue-dead-leases", lambda: janitor_tasks.requeue_dead_leases(svc.db),
         max(10, settings.lease_seconds // 2)),
        ("drop-unstackable-raws", lambda: janitor_tasks.drop_unstackable_raws(svc), 3600),
        ("reconcile", lambda: janitor_tasks.reconcile(svc, settings.reconcile_grace_seconds), 3600),
        ("prune-thumbnails", lambda: janitor_tasks.prune_thumbnails(svc), 3600),
        ("prune-renditions", lambda: janitor_tasks.prune_renditions(svc), 3600),
        ("forget-stackers", lambda: queue.forget_stackers(svc.db), 3600),
    ]
    if settings.stack_every_minutes > 0:
        source = worker.DirectSource(svc)
        found.append(("stacking-pass", lambda: _stacking_pass(source, settings),
                      settings.stack_every_minutes * 60))
    return found


def _stacking_pass(source, settings) -> int:
    """Stack every job that is pending now, one after another."""
    done = 0
    while not stopping.is_set() and worker.run_once(source, worker.worker_name(),
                                                    lease_seconds=settings.lease_seconds, stop=stopping,
                                                    work_dir=worker.work_root(settings.data_dir)):
        done += 1
    return done


def run_task(svc, name: str, task, quiet_when_idle: bool = False) -> None:
    """Run one task, log what it did, and give its thread's database connection back.

    quiet_when_idle: a task that found nothing to do logs at debug level only (the scheduler's
    runs: a quiet site logs nothing every tick); a ``--once`` run reports every task.
    """
    try:
        did = task()
        idle = quiet_when_idle and not _did_something(did)
        log.log(logging.DEBUG if idle else logging.INFO, "%s: %s", name, did)
    except Exception:                  # the next run tries again; the scheduler must go on
        log.exception("%s failed", name)
    finally:
        release(svc.db)


def _did_something(result) -> bool:
    """A task's result (ids, keys, counts by kind) says it changed something."""
    if isinstance(result, dict):
        return any(result.values())
    return bool(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="CrowdSky janitor")
    parser.add_argument("--once", action="store_true", help="run every task once and exit")
    args = parser.parse_args(argv)
    logs.setup("janitor")
    svc = Services.open(config.load())
    if args.once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        for name, task, _ in tasks(svc):
            if stopping.is_set():
                break
            run_task(svc, name, task)
        return 0
    scheduler = BlockingScheduler(timezone="UTC")
    for name, task, seconds in tasks(svc):
        scheduler.add_job(run_task, "interval", args=(svc, name, task, True), seconds=seconds, id=name,
                          max_instances=1, coalesce=True)

    def stop(*_):
        # Tasks still running finish (a stacking pass gives its job back) before the process exits.
        stopping.set()
        if scheduler.running:
            scheduler.shutdown(wait=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    log.info("janitor running: %s", ", ".join(job.id for job in scheduler.get_jobs()))
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
