"""CrowdSky's stacker: claims one job at a time, stacks its frames, archives the result.

    python stacker.py --once            claim and stack one pending job, then exit
    python stacker.py --loop            keep stacking until SIGTERM / Ctrl-C
    python stacker.py stack FRAME... -o OUT.fits [--preview OUT.png]
                                        stack local files with the same pipeline, no server

It is stateless: run it from cron, from the janitor's scheduler, or as many copies on many machines.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from lib import config, worker


def stack_command(argv) -> int:
    from lib.stacking import StackingError, stack_files

    parser = argparse.ArgumentParser(prog="stacker.py stack", description="Stack local raw frames.")
    parser.add_argument("frames", nargs="+", type=Path, help="raw FITS frames (16-bit Bayer)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output FITS, (3, H, W) float32")
    parser.add_argument("--preview", type=Path, help="also write an auto-stretched PNG preview")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.frames if not p.is_file()]
    if missing:
        parser.error("no such file: " + ", ".join(missing))

    def progress(fraction: float, message: str) -> None:
        logging.info("%3.0f%% %s", 100 * fraction, message)

    try:
        result = stack_files(args.frames, progress=progress)
    except StackingError as exc:
        print(f"stacking failed: {exc}", file=sys.stderr)
        return 2
    result.write_fits(args.output)
    if args.preview:
        result.write_preview(args.preview)
    rejected = [f for f in result.frames if not f.used]
    print(f"stacked {result.ncombine} of {len(result.frames)} frames, {result.exptime_total:.0f} s total "
          f"-> {args.output}")
    for frame in rejected:
        print(f"  rejected {frame.name}: {frame.reason}")
    return 0


def job_source(settings):
    """Direct mode next to the database and storage; the worker API when only a URL is given."""
    if settings.api_url and settings.worker_token:
        from lib.remote import RemoteSource
        return RemoteSource(settings.api_url, settings.worker_token)
    from lib.db import connect
    from lib.storage import open_storage
    db = connect(settings.database_url)
    buffer = open_storage(settings.buffer_url, settings.buffer_credentials, role="buffer")
    archive = open_storage(settings.archive_url, settings.archive_credentials, role="archive")
    archive.ensure_ready()
    return worker.DirectSource(settings, db, buffer, archive)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv[:1] == ["stack"]:
        return stack_command(argv[1:])
    parser = argparse.ArgumentParser(description="CrowdSky stacker")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="stack one pending job, then exit")
    mode.add_argument("--loop", action="store_true", help="keep stacking until stopped")
    args = parser.parse_args(argv)

    settings = config.load()
    source = job_source(settings)
    name = worker.worker_name()
    if args.once:
        if not worker.run_once(source, name, lease_seconds=settings.lease_seconds):
            print("no pending job")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.run_loop(source, name, lease_seconds=settings.lease_seconds,
                    poll_seconds=settings.poll_seconds, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
