"""stack_files, and the stacking process where a multi-worker stack actually runs.

With more than one worker stack_files() starts `python -m lib.stacking.runner WORKDIR CALLER_PID` and
waits for it. The runner is a fresh interpreter that imports only the pipeline, forks its worker pool
before doing anything else, streams progress back as JSON lines on stdout and leaves the result (or the
reason there is none) in WORKDIR.

Why a process of its own rather than a pool in the caller:
- the caller may run threads (the stacker's heartbeats, a web server); forking a threaded process can
  hand the child a lock that is never released. The runner has run nothing but imports when it forks.
- spawn- or forkserver-started workers would re-import the caller's main module (for the stacker:
  its database and storage clients) in every worker; the runner's workers carry only the pipeline.
- whatever the stack allocates goes back to the system when the runner exits.
- if the caller dies the runner and its workers die with it (PR_SET_PDEATHSIG), and the next stack
  removes the scratch directory they leave behind.
- the caller never imports the pipeline's libraries (OpenCV, sep, astropy): the runner renders the
  FITS and PNG files into the StackResult, so the caller adds little to the memory of the stack.
"""
from __future__ import annotations

import ctypes
import functools
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

from .options import StackingError, StackOptions, StackResult

SCRATCH_PREFIX = "crowdsky-stack-"
REPO_ROOT = Path(__file__).resolve().parents[2]


class InProcess:
    """Runs tasks in the calling process: one worker needs no pool (and no second copy of anything)."""

    def imap_unordered(self, function, tasks):
        return map(function, tasks)

    def close(self) -> None:
        pass


class Workers:
    """A fork-started process pool yielding results as they finish. A worker that dies (killed, out
    of memory) fails the stack with BrokenProcessPool instead of leaving it waiting forever."""

    def __init__(self, workers: int):
        # with "fork" the executor starts every worker at its first task, before its own threads
        context = multiprocessing.get_context("fork")
        self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)

    def imap_unordered(self, function, tasks):
        for future in as_completed([self._executor.submit(function, task) for task in tasks]):
            yield future.result()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _init_worker() -> None:
    import cv2  # imported by the runner before the fork: this only looks it up

    _die_with_parent()
    # each worker is one of min(cores, frames) processes: OpenCV's own threads would only compete
    cv2.setNumThreads(1)
    _keep_freed_memory()


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc / not Linux: the tuning below is skipped
        return None


def _die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so that nothing keeps running
    for a stacker that was killed."""
    libc = _libc()
    if libc is not None:
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _keep_freed_memory() -> None:
    """Tell glibc which freed blocks to keep for reuse and which to hand back to the kernel.

    The combine step allocates and frees the same few megabytes thousands of times; by default glibc
    returns such blocks to the kernel and the next allocation page-faults them back in, which costs
    about as much as the arithmetic. Lower thresholds (4 MB / 8 MB) were tried: they save ~15 MB a
    worker and cost 2-4 s of page faults on 32 frames.
    """
    libc = _libc()
    if libc is not None:
        m_trim_threshold, m_mmap_threshold = -1, -3
        # below 16 MB (the combine's temporaries, frame planes): from the heap, reused; from 16 MB (the
        # demosaiced frame, row blocks): a mapping of its own, unmapped on free. Up to 64 MB of free
        # heap is kept.
        libc.mallopt(m_mmap_threshold, 16 * 2**20)
        libc.mallopt(m_trim_threshold, 64 * 2**20)


def releases_memory(task_function):
    """Decorate a per-frame task so that the worker hands the heap's free memory back to the kernel
    (glibc's malloc_trim) when the task returns.

    Measuring and registering a frame each peak at ~40 MB, at different places in the heap; what one
    frees is kept (see _keep_freed_memory) but only partly reused by the other, so without this a
    worker holds about both peaks at once. It costs a few ms of page faults per frame.
    """
    @functools.wraps(task_function)
    def task(*args):
        try:
            return task_function(*args)
        finally:
            libc = _libc()
            if libc is not None:
                libc.malloc_trim(0)
    return task


# ----------------------------------------------------------------------------------- caller side

Progress = Callable[[float, str], None]


def stack_files(paths: Sequence[Path], *, names: Sequence[str] | None = None, progress: Progress | None = None,
                options: StackOptions = StackOptions()) -> StackResult:
    """Stack raw Bayer FITS frames into one colour image.

    paths: the frames. names: display names for verdicts and the FRAMES table, default the file
    names. progress(fraction 0..1, message) is called per frame while measuring and registering and
    per row block while combining. Raises StackingError if no frame can be used.
    With more than one worker the stack runs in a process of its own (see the module docstring);
    workers=1 runs it in the calling process.
    """
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths] if names is None else [str(n) for n in names]
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} paths")
    if not paths:
        raise StackingError("no frames to stack")
    report = progress or (lambda fraction, message: None)
    workers = min(options.workers or os.cpu_count() or 1, len(paths))
    if workers > 1:
        return run_in_subprocess(paths, names, report, options, workers)
    from .pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=options.tmp_dir) as workdir:
        return run_pipeline(paths, names, report, options, InProcess(), Path(workdir), 1)


def run_in_subprocess(paths: list[Path], names: list[str], report: Progress,
                      options: StackOptions, workers: int) -> StackResult:
    """Run the pipeline in a runner process; returns its StackResult or raises its StackingError."""
    scratch_root = Path(options.tmp_dir or tempfile.gettempdir())
    _remove_orphaned_scratch(scratch_root)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=scratch_root) as workdir:
        with open(Path(workdir) / "request.pickle", "wb") as handle:
            pickle.dump((paths, names, options, workers), handle)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        # stderr goes to a file: a pipe nobody reads until the end could fill up and stall the runner
        with open(Path(workdir) / "stderr.txt", "w+") as errors:
            command = [sys.executable, "-m", "lib.stacking.runner", workdir, str(os.getpid())]
            # A session of its own: the runner and its workers are one process group to stop together,
            # and a terminal's Ctrl-C reaches the caller, which decides (it stops the stack below).
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=errors, text=True, start_new_session=True)
            try:
                for line in process.stdout:
                    try:
                        fraction, message = json.loads(line)
                    except (ValueError, TypeError):  # something else printed to stdout: not ours
                        continue
                    report(fraction, message)
            except BaseException:  # the caller gave up (its progress callback raised, Ctrl-C): stop the stack
                _stop_group(process)
                raise
            if process.wait() != 0:
                errors.seek(0)
                raise RuntimeError(f"the stacking process failed with exit code {process.returncode}: "
                                   f"{errors.read().strip()[-2000:]}")
        with open(Path(workdir) / "result.pickle", "rb") as handle:
            outcome, value = pickle.load(handle)
    if outcome == "error":
        raise StackingError(value)
    return value


def _stop_group(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Kill the runner and its workers and return once none of them runs any more.

    Killing the runner alone is not enough: its workers die of PR_SET_PDEATHSIG only when the
    kernel gets round to it, which on a busy machine can be after the caller has moved on (and
    removed the scratch directory they still write to). Workers that are dead but not yet reaped
    by init (zombies) run nothing and hold no files, so they do not count.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    deadline = time.monotonic() + timeout_s
    while _group_running(process.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _group_running(pgid: int) -> bool:
    """Whether a process of group *pgid* is alive and not a zombie (Linux /proc; elsewhere: kill 0)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue                          # it ended while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _remove_orphaned_scratch(root: Path) -> None:
    """Delete scratch directories of stacks whose process no longer exists (it was killed)."""
    for candidate in root.glob(f"{SCRATCH_PREFIX}*-*"):
        owner = candidate.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------- runner side

def main(workdir: str, caller: int) -> int:
    _die_with_parent()
    if os.getppid() != caller:  # the caller died before we could ask to die with it
        return 1
    from .pipeline import run_pipeline  # before the fork: the workers share the imported libraries

    with open(Path(workdir) / "request.pickle", "rb") as handle:
        paths, names, options, workers = pickle.load(handle)
    pool = Workers(workers)

    def report(fraction: float, message: str) -> None:
        print(json.dumps([fraction, message]), flush=True)

    try:
        outcome = ("ok", run_pipeline(paths, names, report, options, pool, Path(workdir), workers))
    except StackingError as exc:
        outcome = ("error", str(exc))
    finally:
        pool.close()
    with open(Path(workdir) / "result.pickle", "wb") as handle:
        pickle.dump(outcome, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return 0


if __name__ == "__main__":
    status = main(sys.argv[1], int(sys.argv[2]))
    sys.stdout.flush()
    os._exit(status)  # the result is on disk: skip tearing down the interpreter, the caller is waiting
