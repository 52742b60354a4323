"""``make run``: the schema once, then the ingest app, one stacker and the janitor, stopped together.

    python -m lib.launcher [--host H] [--port P]

The schema is created (or completed) first, in this process, so the three roles start on a database
that is ready (each would also create it safely on its own; see ``lib.db.ensure_schema``).

Each role runs in a process group of its own, so a terminal's Ctrl-C (SIGINT to the foreground
group) reaches this launcher only. The launcher then sends every role one SIGTERM, their graceful
stop (the app finishes requests in flight, the stacker gives its job back, the janitor lets its
task end), waits, and kills whatever is left after ``GRACE_S``. A second Ctrl-C kills at once.
If one role exits by itself, the others are stopped too and the launcher exits with its status.
Should the launcher itself be killed, the kernel sends each role SIGTERM (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRACE_S = 30.0


def roles(host: str, port: int) -> dict[str, list[str]]:
    """The command line of each role, by name."""
    return {
        "ingest": [sys.executable, "ingest_app.py", "--host", host, "--port", str(port)],
        "stacker": [sys.executable, "stacker.py", "--loop"],
        "janitor": [sys.executable, "janitor.py"],
    }


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.launcher",
                                     description="Run the ingest app, one stacker and the janitor together.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    stops = []                       # one entry per SIGINT / SIGTERM received
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stops.append(signum))

    from lib import config, db
    settings = config.load()
    try:
        db.migrate(settings.database_url)
    except Exception as exc:         # a wrong URL or a server that is down: one line, no traceback
        print(f"cannot prepare the database: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if stops:
        return 0
    print(f"CrowdSky on http://{args.host}:{args.port}  (data in {settings.data_dir}; Ctrl-C stops)",
          file=sys.stderr, flush=True)

    children: dict[str, subprocess.Popen] = {}
    for name, command in roles(args.host, args.port).items():
        children[name] = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, process_group=0,
                                          preexec_fn=_stop_with_parent)

    exited: tuple[str, int] | None = None
    while not stops and exited is None:
        for name, child in children.items():
            if child.poll() is not None:
                exited = (name, child.returncode)
                break
        else:
            time.sleep(0.2)

    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    seen = len(stops)
    for child in children.values():
        while child.poll() is None and time.monotonic() < deadline and len(stops) <= seen:
            time.sleep(0.1)
    for child in children.values():
        if child.poll() is None:     # past the grace period, or asked twice: kill the role
            print(f"killing {child.args[1]} (pid {child.pid})", file=sys.stderr)
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        child.wait()
    if exited is not None:
        name, status = exited
        print(f"{name} exited with status {status}; the others were stopped", file=sys.stderr)
        return status or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
