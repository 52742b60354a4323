"""CrowdSky's stacker: claims one job at a time, stacks its frames, archives the result.

    python stacker.py --once            claim and stack one pending job, then exit
    python stacker.py --loop            keep stacking until SIGTERM / Ctrl-C
    python stacker.py stack FRAME... -o OUT.fits [--preview OUT.png] [--drizzle 2 [--pixfrac 0.7]]
                                        stack local files with the same pipeline, no server

It is stateless: run it from cron, from the janitor's scheduler, or as many copies on many machines.
SIGTERM or Ctrl-C stops it within moments: a job in hand is given back to the queue (pending again,
the attempt not counted) unless it is already being archived, which then finishes first.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path



def stack_command(argv) -> int:
    from lib.stacking import StackingError, StackOptions, stack_files

    parser = argparse.ArgumentParser(prog="stacker.py stack", description="Stack local raw frames.")
    parser.add_argument("frames", nargs="+", type=Path, help="raw FITS frames (16-bit Bayer)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output FITS, (3, H, W) float32")
    parser.add_argument("--preview", type=Path, help="also write an auto-stretched PNG preview")
    parser.add_argument("--drizzle", type=int, default=1, choices=(1, 2, 3), metavar="N",
                        help="Bayer drizzle onto an N times finer grid (1: off, the default)")
    parser.add_argument("--pixfrac", type=float, default=0.7,
                        help="drizzle drop size as a fraction of a raw pixel (0.1..1, default 0.7)")
    args = parser.parse_args(argv)
    if not 0.1 <= args.pixfrac <= 1.0:
        parser.error("--pixfrac must be between 0.1 and 1")
    missing = [str(p) for p in args.frames if not p.is_file()]
    if missing:
        parser.error("no such file: " + ", ".join(missing))

    def progress(fraction: float, message: str) -> None:
        print(f"{100 * fraction:3.0f}% {message}", file=sys.stderr, flush=True)

    try:
        result = stack_files(args.frames, progress=progress,
                             options=StackOptions(drizzle=args.drizzle, pixfrac=args.pixfrac))
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
    print(f"plate solved in {result.solve_seconds:.1f} s" if result.plate_solved
          else f"not plate solved: {result.solve_reason}")
    return 0


def job_source(settings, worker):
    """Direct mode next to the database and storage; the worker API when only a URL is given."""
    if settings.api_url and settings.worker_token:
        from lib.remote import RemoteSource
        return RemoteSource(settings.api_url, settings.worker_token)
    from lib.services import Services
    return worker.DirectSource(Services.open(settings))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stack"]:
        return stack_command(argv[1:])
    # Imported here, not at the top: `stack` needs none of the service modules (database drivers,
    # storage clients), and loading them costs a second and ~100 MB per run.
    from lib import config, logs, worker
    logs.setup("stacker")
    parser = argparse.ArgumentParser(description="CrowdSky stacker")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--once", action="store_true", help="stack one pending job, then exit")
    mode.add_argument("--loop", action="store_true", help="keep stacking until stopped")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="stack N jobs in parallel")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    settings = config.load()
    source = job_source(settings, worker)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    claimed = []

    work_dir = worker.work_root(settings.data_dir)
    worker.sweep_work_root(work_dir)     # what a stacker killed here before left behind

    def one_slot(slot: int) -> None:
        name = f"{worker.worker_name()}#{slot}"
        if args.once:
            claimed.append(worker.run_once(source, name, lease_seconds=settings.lease_seconds, stop=stop,
                                           work_dir=work_dir))
        else:
            worker.run_loop(source, name, lease_seconds=settings.lease_seconds,
                            poll_seconds=settings.poll_seconds, stop=stop, work_dir=work_dir)

    slots = [threading.Thread(target=one_slot, args=(i,), daemon=True) for i in range(args.jobs)]
    for thread in slots:
        thread.start()
    while any(thread.is_alive() for thread in slots):
        for thread in slots:
            thread.join(timeout=0.5)   # short joins keep the main thread free for signals
    if args.once and not any(claimed):
        print("no pending job")
    return 0


if __name__ == "__main__":
    sys.exit(main())
