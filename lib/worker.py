"""The stacker's loop, separate from where its jobs come from.

A *job source* hands out leased jobs and takes results back. ``DirectSource`` talks to the database
and the storage itself (a stacker next to them); a remote source talks to the ingest app's worker API
(a stacker on a machine with neither). The loop above them is the same: claim, fetch the raws,
stack them while a heartbeat keeps the lease, then complete or fail.

Stopping (SIGTERM, Ctrl-C) sets the *stop* event: the job in hand is abandoned at its next progress
step and given back to the queue (pending again at once, the attempt not counted), unless it is
already being archived, which then finishes. No job is left running until its lease runs out.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path

from lib import jobs, queue
from lib.db import release
from lib.stacking import StackingError, stack_files
from lib.stacking.group_files import bring_up_to_date
from lib.stacking.imported import read_telescope_stack
from lib.stacking.photometry import measure_group_file
from lib.stacking.solve import solve_stack_file

log = logging.getLogger("crowdsky.stacker")


# Progress reaches the jobs table (and the status page) at most this long after the stack reports it.
PROGRESS_EVERY_S = 1.0


class LeaseLost(Exception):
    """Another stacker owns the job now; this one must drop it without reporting anything."""


class ShuttingDown(Exception):
    """The stacker was asked to stop: give the job back instead of finishing it."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DirectSource:
    """Jobs straight from the database, raws from the buffer, stacks into the archive."""

    def __init__(self, svc):
        self.svc = svc
        self.settings, self.db, self.buffer, self.archive = svc.settings, svc.db, svc.buffer, svc.archive

    def claim(self, worker: str):
        return queue.claim(self.db, worker, self.settings.lease_seconds)

    def inputs(self, lease) -> list[dict]:
        return jobs.job_inputs(self.db, lease.job)

    def fetch(self, lease, item: dict, dest: Path) -> None:
        store = self.buffer if item["store"] == "buffer" else self.archive
        with open(dest, "wb") as out:
            for part in store.iter_bytes(item["key"]):
                out.write(part)

    def heartbeat(self, lease, progress: float, message: str) -> bool:
        return queue.heartbeat(self.db, lease, progress, message, self.settings.lease_seconds)

    def complete(self, lease, fits_path: Path, preview_path: Path) -> int | None:
        return jobs.complete_job(self.svc, lease, fits_path, preview_path)

    def run_direct(self, lease, workdir: Path, progress) -> bool:
        """A kind that works on the database and archive itself (lib/jobs.py DIRECT_ONLY): run it and
        mark it done; False when the lease had been lost."""
        DIRECT_MAKERS[lease.job["kind"]](self.svc, lease, workdir, progress)
        return jobs.KINDS[lease.job["kind"]].complete(self.svc, lease, None, None)

    def fail(self, lease, error: str, permanent: bool) -> str | None:
        return queue.fail(self.db, lease, error, self.settings.retry_backoff_seconds, permanent=permanent)

    def wait_for_work(self, timeout: float) -> None:
        queue.wait_for_work(self.db, timeout)

    def give_back(self, lease) -> bool:
        """Return the job to the queue unfinished (stopping): pending now, attempt not counted."""
        return queue.release(self.db, lease)

    def release(self) -> None:
        """This thread is done with the database for now."""
        release(self.db)


class _Heartbeat:
    """Reports progress and renews the lease from a thread.

    A change of progress or message is written within ``PROGRESS_EVERY_S`` (so the status page
    follows the stack, at most one write a second); without a change the lease is still renewed
    every *interval* seconds. Stacking steps can be long; writing from a thread keeps the lease
    alive whatever step runs, and the progress callback raises ``LeaseLost`` at the next step once
    a write is refused.
    """

    def __init__(self, source, lease, interval: float, stop: threading.Event | None = None):
        self.source, self.lease, self.interval, self.stop = source, lease, interval, stop
        self.progress, self.message = 0.0, "starting"
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def update(self, progress: float, message: str) -> None:
        if self.lost:
            raise LeaseLost(f"lease of job {self.lease.job_id} was lost")
        if self.stop is not None and self.stop.is_set():
            raise ShuttingDown(f"the stacker is stopping; job {self.lease.job_id} not finished")
        self.progress, self.message = max(0.0, min(1.0, progress)), message
        log.info("job %s: %3.0f%% %s", self.lease.job_id, 100 * self.progress, message)

    def _run(self) -> None:
        sent, sent_at, failing = None, time.monotonic(), False
        try:
            while not self._stop.wait(min(PROGRESS_EVERY_S, self.interval)):
                state = (self.progress, self.message)
                if state == sent and time.monotonic() - sent_at < self.interval:
                    continue
                try:
                    if not self.source.heartbeat(self.lease, *state):
                        self.lost = True
                        return
                    sent, sent_at, failing = state, time.monotonic(), False
                except Exception as exc:      # a passing outage: the lease still has time left
                    # tried again every second: one warning per outage, not one a second
                    log.log(logging.DEBUG if failing else logging.WARNING,
                            "job %s: heartbeat failed: %s", self.lease.job_id, exc)
                    failing = True
        finally:
            self.source.release()


def work_root(data_dir: Path) -> Path:
    """Where this host's stackers keep the raws and results of the jobs in hand:
    ``DATA_DIR/work/<host>/``, one ``job<id>-<pid>-<random>`` folder per job."""
    return Path(data_dir) / "work" / socket.gethostname()


def sweep_work_root(root: Path) -> list[Path]:
    """Remove job folders whose stacker process is gone (killed before it could clean up); returns them."""
    removed = []
    for folder in root.glob("job*-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:           # someone else's process: alive
        return True
    return True


def run_once(source, worker: str, *, lease_seconds: float, stop: threading.Event | None = None,
             work_dir: Path | None = None) -> bool:
    """Claim and process one job. Returns False when there was nothing to claim.

    Once *stop* is set, the job is given back at its next progress step (see the module docstring).
    The job's files live in a folder under *work_dir* (default: ``crowdsky-work`` in the system's
    temp folder), removed when the job ends; folders of stackers that were killed are removed
    before each job.
    """
    lease = source.claim(worker)
    if lease is None:
        return False
    log.info("job %s: claimed by %s (attempt %s)", lease.job_id, worker, lease.job["attempts"])
    root = Path(work_dir or Path(tempfile.gettempdir()) / "crowdsky-work")
    root.mkdir(parents=True, exist_ok=True)
    sweep_work_root(root)
    workdir = Path(tempfile.mkdtemp(prefix=f"job{lease.job_id}-{os.getpid()}-", dir=root))
    try:
        with _Heartbeat(source, lease, interval=max(1.0, lease_seconds / 4), stop=stop) as beat:
            _process(source, lease, workdir, beat)
    except LeaseLost as exc:
        log.warning("job %s: %s; dropping it", lease.job_id, exc)
    except Exception as exc:
        if stop is not None and stop.is_set():
            # ShuttingDown, or an error the stop caused (a signal to the whole process group
            # kills the stacking pool's workers too): neither is the job's fault.
            _give_back(source, lease, exc)
        elif isinstance(exc, StackingError):
            state = source.fail(lease, str(exc), permanent=True)
            log.warning("job %s: cannot be stacked: %s (%s)", lease.job_id, exc, state)
        else:
            state = source.fail(lease, f"{type(exc).__name__}: {exc}", permanent=False)
            log.error("job %s: failed (%s): %s", lease.job_id, state, traceback.format_exc())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        source.release()
    return True


def _give_back(source, lease, why: Exception) -> None:
    """Stopping mid-job: hand the job back to the queue rather than leave it leased to nobody."""
    state = "pending again" if source.give_back(lease) else "the lease was already lost"
    log.warning("job %s: given back, the stacker is stopping (%s: %s); %s",
                lease.job_id, type(why).__name__, why, state)


def _process(source, lease, workdir: Path, beat: _Heartbeat) -> None:
    if lease.job["kind"] in DIRECT_MAKERS:
        if not source.run_direct(lease, workdir, beat.update):
            raise LeaseLost(f"job {lease.job_id} was taken over before it completed")
        log.info("job %s: done (%s)", lease.job_id, lease.job["kind"])
        return
    inputs = source.inputs(lease)
    if not inputs:
        raise StackingError("the chunk has no frames left in the buffer")
    paths = []
    for i, item in enumerate(inputs, start=1):
        beat.update(0.2 * (i - 1) / len(inputs), f"downloading {i}/{len(inputs)}")
        path = workdir / f"input{i:05d}.fits"
        source.fetch(lease, item, path)
        paths.append(path)

    def progress(fraction: float, message: str) -> None:
        beat.update(0.2 + 0.75 * fraction, message)

    kind = lease.job["kind"]
    result = MAKERS[kind](paths, inputs, json.loads(lease.job.get("payload") or "{}"), kind, progress)
    fits_path, preview_path = workdir / "stack.fits", workdir / "preview.png"
    result.write_fits(fits_path)
    result.write_preview(preview_path)
    beat.update(0.96, "plate solving")
    # deep, crowd and telescope stacks (chunk stacks were solved when stacked); scratch in the job's folder
    solve_stack_file(fits_path, tmp_dir=str(workdir))
    if kind in ("deep", "crowd"):            # chunk stacks were measured when stacked
        try:
            measure_group_file(fits_path)
        except Exception as exc:   # the numbers describe the stack: never a reason to lose it
            log.warning("job %s: photometry not measured: %s: %s", lease.job_id, type(exc).__name__, exc)
    beat.update(0.97, "archiving")
    stack_id = source.complete(lease, fits_path, preview_path)
    if stack_id is None:
        raise LeaseLost(f"job {lease.job_id} was taken over before it completed")
    log.info("job %s: done, stack %s", lease.job_id, stack_id)


def _stack_chunk(paths, inputs, payload, kind, progress):
    """A chunk job: the owner's raw frames, stacked."""
    return stack_files(paths, names=[item["filename"] for item in inputs], progress=progress)


def _import_telescope_stack(paths, inputs, payload, kind, progress):
    """An import job: one stack made on the telescope, made into a CrowdSky stack."""
    progress(0.5, "reading the telescope's stack")
    return read_telescope_stack(paths[0], name=inputs[0]["filename"], **payload)


def _update_group(paths, inputs, payload, kind, progress):
    """A deep or crowd job: the group brought up to its sources, either its current file (input
    ``group``) plus the chunk stacks it lacks (``source-<stack id>``), or made anew from them all.
    A chunk stack that does not register is refused inside the result (lib/groups.py records it)."""
    group = next((path for item, path in zip(inputs, paths) if item["id"] == "group"), None)
    sources = [(int(item["id"].split("-", 1)[1]), path) for item, path in zip(inputs, paths)
               if item["id"].startswith("source-")]
    return bring_up_to_date(group, sources, progress)


# What each kind of job makes of its inputs: (paths, inputs, payload, kind, progress) -> a result
# with write_fits(path) and write_preview(path).
MAKERS = {"chunk": _stack_chunk, "import": _import_telescope_stack, "deep": _update_group, "crowd": _update_group}


def _update_atlas(svc, lease, workdir, progress):
    """An atlas job: the HiPS tiles of the crowd stacks that changed, and their parents (lib/atlas.py)."""
    from lib import atlas
    done = atlas.run_job(svc, lease, workdir, progress)
    log.info("job %s: atlas: %s crowd stacks changed, %s tiles, %s parents", lease.job_id,
             len(done["changed"]), done["tiles"], done["parents"])


# Kinds that read and write the database and archive themselves: (svc, lease, workdir, progress) -> None.
DIRECT_MAKERS = {"atlas": _update_atlas}


def run_loop(source, worker: str, *, lease_seconds: float, poll_seconds: float,
             stop: threading.Event, work_dir: Path | None = None) -> None:
    """Process jobs until *stop* is set; idle waits grow from 0.5 s up to *poll_seconds*."""
    idle = 0.5
    while not stop.is_set():
        if run_once(source, worker, lease_seconds=lease_seconds, stop=stop, work_dir=work_dir):
            idle = 0.5
            continue
        source.wait_for_work(idle)
        idle = min(poll_seconds, idle * 2)
