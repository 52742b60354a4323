"""Upload a Seestar's raw sub-frames to CrowdSky from the command line.

    python upload.py DIR --server URL [--user NAME] [--parallel N] [--wait] [--no-finalize] [--dry-run]

DIR is a ``<target>_sub`` folder of the telescope's ``MyWorks`` tree, a folder above such folders
(the whole ``MyWorks`` tree works), or any folder holding ``Light_*.fit`` frames. Only light frames
inside ``*_sub`` folders are sent; the stacked results in ``MyWorks/<target>/`` are left alone.

The token comes from ``--user`` (asks for the password), else ``CROWDSKY_TOKEN``, else it asks for
user name and password. Frames already sent (a local record per server, and the server's own
200 for bytes it already has) are not sent again. Exit code: 0 all good, 1 a file or a job failed,
2 usage, login or server-unreachable errors. See docs/upload-cli.md.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import requests
from tqdm import tqdm

FITS_SUFFIXES = (".fit", ".fits")
ATTEMPTS = 3                   # one try and two retries on 5xx or connection errors
BACKOFF_S = 1.0                # wait before the first retry; doubles after each
POLL_S = 3.0                   # --wait: seconds between job polls
MAX_POLL_MISSES = 20           # --wait: polls in a row that may fail before giving up
FINISHED = ("done", "failed")
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10, 300


class Fatal(Exception):
    """Stop now with exit code 2: bad usage, refused login, or a server that cannot be reached."""


# --- finding the frames ----------------------------------------------------------------------

@dataclass
class Frame:
    path: Path
    size: int
    sha256: str = ""
    outcome: str = ""          # uploaded | already | failed
    frame_id: int | None = None
    session_id: int | None = None
    error: str = ""


def find_candidates(root: Path) -> list[Path]:
    """FITS files in ``*_sub`` folders under *root*, or in *root* itself when it holds frames."""
    if root.name.endswith("_sub") or any(p.name.startswith("Light_") for p in fits_files(root)):
        return fits_files(root)
    found, seen = [], set()
    for folder, subfolders, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:                       # a symlink loop: been here
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if Path(folder).name.endswith("_sub"):
            found.extend(fits_files(Path(folder)))
    return found


def fits_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in FITS_SUFFIXES and not p.name.startswith(".") and p.is_file())


def not_light_reason(path: Path) -> str | None:
    """Why *path* is not a light frame, or None when it is one (or its header cannot be read:
    the server then names what is wrong with it)."""
    if not path.name.startswith("Light_"):
        return "not a light frame (the name does not start with Light_)"
    try:
        from astropy.io import fits            # only here: the rest of the tool does not need it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imagetyp = fits.getheader(path).get("IMAGETYP")
    except Exception:
        return None
    if imagetyp is not None and str(imagetyp).strip().lower() not in ("light", "light frame"):
        return f"not a light frame (IMAGETYP is {str(imagetyp).strip()!r})"
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --- what was sent before: {server: {sha256: {"frame": id, "session": id, "file": name}}} ------

def default_state_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "crowdsky" / "uploads.json"


def load_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def server_records(state: dict, server: str) -> dict:
    records = state.get(server)
    return records if isinstance(records, dict) else {}


def save_state(path: Path, server: str, records: dict, dropped: set[str]) -> None:
    """Merge this run's records for *server* into the file (another run may have written it)."""
    state = load_state(path)
    mine = {k: v for k, v in server_records(state, server).items() if k not in dropped}
    mine.update(records)
    state[server] = mine
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".uploads-")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --- talking to the server -------------------------------------------------------------------

class Api:
    """The JSON API with a Bearer token; one HTTP session per thread."""

    def __init__(self, server: str, token: str | None = None):
        self.server, self.token = server, token
        self._local = threading.local()

    @property
    def http(self) -> requests.Session:
        if not hasattr(self._local, "http"):
            self._local.http = requests.Session()
            if self.token:
                self._local.http.headers["Authorization"] = f"Bearer {self.token}"
        return self._local.http

    def call(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", (CONNECT_TIMEOUT_S, 60))
        try:
            return self.http.request(method, self.server + path, **kw)
        except requests.ConnectionError as exc:
            raise Fatal(f"cannot reach {self.server}: {exc}") from None
        except requests.Timeout:
            raise Fatal(f"{self.server} did not answer {method} {path} in time") from None

    def json(self, method: str, path: str, ok=(200,), **kw) -> dict:
        response = self.call(method, path, **kw)
        if response.status_code == 401:
            raise Fatal(f"the server refused the login: {error_text(response)}")
        if response.status_code not in ok:
            raise ApiError(response)
        return response.json()


class ApiError(Exception):
    def __init__(self, response: requests.Response):
        super().__init__(f"HTTP {response.status_code}: {error_text(response)}")
        self.status = response.status_code


def error_text(response: requests.Response) -> str:
    """The server's ``{"error": ...}`` message, or the start of whatever else it sent."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:200] or response.reason or f"HTTP {response.status_code}"


def get_token(args, server: str) -> str:
    """``--user`` (asks for the password) wins, then ``CROWDSKY_TOKEN``, then asks for both."""
    if not args.user and os.environ.get("CROWDSKY_TOKEN"):
        return os.environ["CROWDSKY_TOKEN"].strip()
    try:
        username = args.user or input("CrowdSky user name: ").strip()
        password = getpass.getpass(f"password for {username}: ")
    except (EOFError, KeyboardInterrupt):
        raise Fatal("no login: set CROWDSKY_TOKEN, or run in a terminal to type user name and password") from None
    response = Api(server).call("POST", "/api/v1/token", json={"username": username, "password": password})
    if response.status_code != 200:
        raise Fatal(f"login as {username!r} failed: {error_text(response)}")
    return response.json()["token"]


def check_login(api: Api) -> None:
    """One cheap authenticated call, so a bad token or a wrong URL stops the run before any work."""
    response = api.call("GET", "/api/v1/status")
    if response.status_code == 401:
        raise Fatal(f"the server refused the token ({error_text(response)}); "
                    "set CROWDSKY_TOKEN to a valid token, or unset it to log in with user name and password")
    if response.status_code >= 500:
        raise Fatal(f"the server cannot take uploads right now ({error_text(response)}, "
                    f"HTTP {response.status_code}); try again later")
    if response.status_code != 200 or not response.headers.get("Content-Type", "").startswith("application/json"):
        raise Fatal(f"{api.server} does not look like a CrowdSky server "
                    f"(GET /api/v1/status answered HTTP {response.status_code})")


# --- uploading ---------------------------------------------------------------------------------

class ProgressFile:
    """A file object that moves the progress bar as requests reads it; never the whole file at once."""

    def __init__(self, f, size: int, bar: tqdm):
        self.f, self.size, self.bar, self.sent = f, size, bar, 0

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sent += len(data)
        self.bar.update(len(data))
        return data


def upload_one(api: Api, session_id: int, frame: Frame, bar: tqdm) -> Frame:
    """PUT one frame; retries on 5xx or a broken connection, gives up at once on a 4xx."""
    url = f"{api.server}/api/v1/sessions/{session_id}/frames/{quote(frame.path.name, safe='')}"
    headers = {"Content-Type": "application/fits", "Content-Length": str(frame.size)}
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with open(frame.path, "rb") as f:
                body = ProgressFile(f, frame.size, bar)
                try:
                    response = api.http.put(url, data=body, headers=headers,
                                            timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
                except (requests.ConnectionError, requests.Timeout) as exc:
                    response, frame.error = None, f"connection failed: {exc}"
                finally:
                    bar.update(-body.sent)     # counted again on a retry, or below when it worked
        except OSError as exc:                 # the file went away or cannot be read: no retry helps
            frame.outcome, frame.error = "failed", f"cannot read the file: {exc}"
            return frame
        if response is not None and response.status_code in (200, 201):
            bar.update(frame.size)
            data = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
            frame.outcome = "uploaded" if response.status_code == 201 else "already"
            frame.frame_id, frame.session_id = data.get("id"), data.get("session_id")
            return frame
        if response is not None:
            frame.error = f"{error_text(response)} (HTTP {response.status_code})"
            if response.status_code < 500:
                break
        if attempt < ATTEMPTS:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    frame.outcome = "failed"
    return frame


def upload_all(api: Api, session_id: int, frames: list[Frame], parallel: int) -> None:
    total = sum(f.size for f in frames)
    pool = ThreadPoolExecutor(parallel)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="uploading",
              disable=None, file=sys.stderr) as bar:
        try:
            for frame in pool.map(lambda f: upload_one(api, session_id, f, bar), frames):
                if frame.outcome == "failed":
                    bar.write(f"FAILED {frame.path}: {frame.error}", file=sys.stdout)
        finally:                               # on Ctrl-C: finish the files in flight, start no more
            pool.shutdown(wait=True, cancel_futures=True)


# --- the run -----------------------------------------------------------------------------------

@dataclass
class Run:
    frames: list[Frame] = field(default_factory=list)        # light frames, to send or already sent
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)
    finalized: bool = False
    finalize_failures: int = 0                                # sessions the server would not finalize

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.frames if f.outcome == outcome)

    def summary(self, dry_run: bool = False) -> str:
        if dry_run:
            unreadable = f", failed {self.count('failed')}" if self.count("failed") else ""
            return (f"dry run: would upload {self.count('')}, already there {self.count('already')}, "
                    f"skipped {len(self.skipped)}{unreadable}")
        line = (f"uploaded {self.count('uploaded')}, already there {self.count('already')}, "
                f"skipped {len(self.skipped)}, failed {self.count('failed')}")
        if not self.finalized:
            return line + "; not finalized"
        counts = Counter(j["status"] for j in self.jobs)
        jobs = f"{len(self.jobs)} job{'' if len(self.jobs) == 1 else 's'}"
        if counts:
            jobs += ": " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        if self.finalize_failures:
            jobs += f"; {self.finalize_failures} session(s) not finalized"
        return f"{line}; {jobs}"

    def exit_code(self) -> int:
        failed = self.count("failed") or self.finalize_failures or any(j["status"] == "failed" for j in self.jobs)
        return 1 if failed else 0


def collect(root: Path) -> Run:
    if not root.is_dir():
        raise Fatal(f"{root} is not a folder")
    candidates = find_candidates(root)
    if not candidates:
        raise Fatal(f"no FITS files found in {root}: point at a Seestar MyWorks tree, "
                    "a <target>_sub folder, or a folder of Light_*.fit frames")
    run = Run()
    for path in candidates:
        reason = not_light_reason(path)
        if reason:
            run.skipped.append((path, reason))
        else:
            run.frames.append(Frame(path, path.stat().st_size))
    return run


def hash_all(run: Run, parallel: int) -> None:
    """SHA-256 of every frame, the key of the upload record; a file that cannot be read fails here."""
    with tqdm(total=len(run.frames), unit="file", desc="checking", disable=None, file=sys.stderr) as bar, \
            ThreadPoolExecutor(parallel) as pool:
        for frame in pool.map(hash_frame, run.frames):
            bar.update(1)
            if frame.outcome == "failed":
                bar.write(f"FAILED {frame.path}: {frame.error}", file=sys.stdout)


def hash_frame(frame: Frame) -> Frame:
    try:
        frame.sha256 = sha256_of(frame.path)
    except OSError as exc:
        frame.outcome, frame.error = "failed", f"cannot read the file: {exc}"
    return frame


def session_frames(api: Api, session_id: int, cache: dict) -> dict | None:
    """The session (with its frames) as the server has it now, or None if it is gone."""
    if session_id not in cache:
        try:
            cache[session_id] = api.json("GET", f"/api/v1/sessions/{session_id}")
        except ApiError:
            cache[session_id] = None
    return cache[session_id]


def apply_records(api: Api, run: Run, records: dict, sessions: dict) -> set[str]:
    """Mark frames the local record says were sent as already there, after checking the server
    still has them (an expired session or a deleted job drops them). Returns the stale hashes."""
    stale = set()
    for frame in run.frames:
        record = records.get(frame.sha256)
        if not isinstance(record, dict) or not isinstance(record.get("session"), int):
            continue
        session = session_frames(api, record.get("session"), sessions)
        if session and any(f["id"] == record.get("frame") for f in session["frames"]):
            frame.outcome, frame.frame_id, frame.session_id = "already", record["frame"], session["id"]
        else:
            stale.add(frame.sha256)
    return stale


def upload_session(api: Api, run: Run, sessions: dict) -> int:
    """An open session already holding some of these frames (a run that was cut short), or a new one."""
    held = sorted({f.session_id for f in run.frames if f.outcome == "already"}, reverse=True)
    for session_id in held:
        session = sessions.get(session_id)
        if session and session["status"] == "open":
            return session_id
    return api.json("POST", "/api/v1/sessions", ok=(201,))["id"]


def finalize(api: Api, run: Run, sessions: dict) -> None:
    """Finalize every still-open session that holds frames of this run."""
    run.finalized = True
    for session_id in sorted({f.session_id for f in run.frames if f.session_id}):
        sessions.pop(session_id, None)         # its state now, not as it was before the uploads
        session = session_frames(api, session_id, sessions)
        if not session or session["status"] != "open" or not session["frames"]:
            continue
        try:
            jobs = api.json("POST", f"/api/v1/sessions/{session_id}/finalize")["jobs"]
        except ApiError as exc:
            print(f"FAILED to finalize session {session_id}: {exc}")
            run.finalize_failures += 1
            continue
        print(f"session {session_id} finalized: {len(jobs)} job{'' if len(jobs) == 1 else 's'}")
        run.jobs.extend(jobs)


def wait_for_jobs(api: Api, run: Run) -> None:
    """Poll the jobs until each is done or failed, then show what they made."""
    waiting = [j for j in run.jobs if j["status"] not in FINISHED]
    with tqdm(total=len(run.jobs), initial=len(run.jobs) - len(waiting), unit="job", desc="stacking",
              disable=None, file=sys.stderr) as bar:
        misses = 0
        while waiting:
            time.sleep(POLL_S)
            try:
                for job in list(waiting):
                    job.update(api.json("GET", f"/api/v1/jobs/{job['id']}"))
                    if job["status"] in FINISHED:
                        waiting.remove(job)
                        bar.update(1)
                misses = 0
            except (Fatal, ApiError) as exc:   # a restart of the server: keep waiting a while
                misses += 1
                if misses >= MAX_POLL_MISSES:
                    raise Fatal(f"gave up waiting for the jobs: {exc}") from None
                bar.write(f"(cannot ask for the jobs just now: {exc}; trying again)", file=sys.stderr)
    for job in run.jobs:
        if job["status"] == "done" and job.get("stack_id"):
            print_stack(api, api.json("GET", f"/api/v1/stacks/{job['stack_id']}"))
        elif job["status"] == "failed":
            print(f"job {job['id']} ({job.get('chunk_key')}) failed: {job.get('error')}")


def print_stack(api: Api, stack: dict) -> None:
    print(f"stack {stack['id']}: {stack['object']} {stack['chunk_key']}: {stack['frames']} frames used, "
          f"{stack['frames_rejected']} rejected, {stack['exposure_s']:g} s exposure; "
          f"{api.server}{stack['fits_url']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    server = (args.server or "").rstrip("/")
    state_path = Path(args.state).expanduser() if args.state else default_state_path()
    try:
        if not server.startswith(("http://", "https://")):
            raise Fatal("give the server as --server http(s)://HOST[:PORT] (or set CROWDSKY_SERVER)")
        run = collect(Path(args.dir).expanduser())
        for path, reason in run.skipped:
            print(f"skipped {path}: {reason}")
        if args.dry_run:
            hash_all(run, args.parallel)
            return dry_run(run, server_records(load_state(state_path), server))
        api = Api(server, get_token(args, server))
        check_login(api)                       # before the hashing, which takes a while on a big card
        hash_all(run, args.parallel)
        return upload_and_finalize(api, args, run, state_path, server_records(load_state(state_path), server))
    except Fatal as exc:
        print(f"upload.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to go on where it stopped", file=sys.stderr)
        return 130


def dry_run(run: Run, records: dict) -> int:
    """What a real run would send, going by the local record only (no server is asked)."""
    for frame in run.frames:
        if frame.sha256 in records:
            frame.outcome = "already"
        elif not frame.outcome:
            print(f"would upload {frame.path} ({frame.size} bytes)")
    print(run.summary(dry_run=True))
    return run.exit_code()


def upload_and_finalize(api: Api, args, run: Run, state_path: Path, records: dict) -> int:
    sessions: dict = {}
    stale = apply_records(api, run, records, sessions)
    to_send = [f for f in run.frames if not f.outcome]
    try:
        if to_send:
            session_id = upload_session(api, run, sessions)
            upload_all(api, session_id, to_send, args.parallel)
    finally:
        sent = {f.sha256: {"frame": f.frame_id, "session": f.session_id, "file": f.path.name}
                for f in run.frames if f.outcome in ("uploaded", "already") and f.frame_id}
        try:
            save_state(state_path, api.server, sent, stale)
        except OSError as exc:
            print(f"warning: cannot keep the upload record in {state_path}: {exc}", file=sys.stderr)
    if args.no_finalize:
        held = sorted({f.session_id for f in run.frames if f.outcome == "uploaded"})
        if held:
            print(f"session {', '.join(map(str, held))} left open (--no-finalize): "
                  "run again without it to finalize")
    else:
        finalize(api, run, sessions)
        if args.wait:
            wait_for_jobs(api, run)
    print(run.summary())
    return run.exit_code()


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Upload a Seestar's raw sub-frames (MyWorks/<target>_sub/Light_*.fit) to CrowdSky.")
    parser.add_argument("dir", metavar="DIR", help="a <target>_sub folder, a folder above such folders "
                                                    "(e.g. MyWorks), or a folder of Light_*.fit frames")
    parser.add_argument("--server", default=os.environ.get("CROWDSKY_SERVER"),
                        help="CrowdSky's address, e.g. https://crowdsky.example (default: $CROWDSKY_SERVER)")
    parser.add_argument("--user", help="log in as this user (asks for the password) instead of using $CROWDSKY_TOKEN")
    parser.add_argument("--parallel", type=positive_int, default=3, metavar="N",
                        help="files sent at the same time (default 3)")
    parser.add_argument("--wait", action="store_true", help="after finalizing, wait for the stacks and list them")
    parser.add_argument("--no-finalize", action="store_true",
                        help="upload only; leave the session open (a later run without it finalizes)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be sent, without contacting the server")
    parser.add_argument("--state", metavar="FILE",
                        help="where to remember what was sent (default ~/.cache/crowdsky/uploads.json)")
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 32:
        raise argparse.ArgumentTypeError("must be between 1 and 32")
    return value


if __name__ == "__main__":
    sys.exit(main())
