"""A job source for stackers on machines with neither database nor storage credentials.

It speaks the ingest app's worker API with a worker token (``CROWDSKY_API_URL`` and
``CROWDSKY_WORKER_TOKEN``); the stacker's loop above it is the same as in direct mode.
"""
from __future__ import annotations

import time
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from lib.queue import Lease


def retry_policy() -> Retry:
    """How every call of a remote stacker is retried: a connection that fails, or an answer of 500,
    502, 503 or 504 (the app restarting, the archive down for a moment), up to 4 more times after
    1, 2, 4, 8 s (or the Retry-After the app sends). Any method: the worker API's calls are tied to
    a lease, so one that arrives twice is refused (409), never applied twice. After the last try
    the last answer is returned as it is.

    Bodies: requests renders a call's body (JSON, the multipart of /complete) before sending, and
    each try sends that same rendering again; nothing is read from a file twice.
    """
    return Retry(total=4, backoff_factor=1, backoff_max=30, status_forcelist=(500, 502, 503, 504),
                 allowed_methods=None, raise_on_status=False, respect_retry_after_header=True)


class RemoteError(Exception):
    pass


class RemoteSource:
    def __init__(self, api_url: str, token: str, timeout: float = 60):
        self.api = api_url.rstrip("/") + "/api/v1/worker"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        adapter = HTTPAdapter(max_retries=retry_policy())
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        """One API call, retried by the session's `retry_policy`."""
        try:
            response = self.http.request(method, self.api + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise RemoteError(f"cannot reach {self.api}: {exc}") from None
        if response.status_code in (401, 403):
            raise RemoteError(f"the app refused the worker token ({response.status_code})")
        return response

    def claim(self, worker: str):
        response = self._call("POST", "/claim", json={"worker": worker})
        if response.status_code == 204:
            return None
        response.raise_for_status()
        data = response.json()
        return Lease(job_id=data["job"]["id"], token=data["lease"], job=data["job"], expires=data["expires"])

    def inputs(self, lease) -> list[dict]:
        response = self._call("GET", f"/jobs/{lease.job_id}/inputs", params={"lease": lease.token})
        response.raise_for_status()
        return response.json()["inputs"]

    def fetch(self, lease, item: dict, dest: Path) -> None:
        path = f"/jobs/{lease.job_id}/inputs/{item['id']}"
        with self._call("GET", path, params={"lease": lease.token}, stream=True) as response:
            response.raise_for_status()
            with open(dest, "wb") as out:
                for part in response.iter_content(1024 * 1024):
                    out.write(part)

    def heartbeat(self, lease, progress: float, message: str) -> bool:
        response = self._call("POST", f"/jobs/{lease.job_id}/heartbeat",
                              json={"lease": lease.token, "progress": progress, "message": message})
        return response.status_code == 200

    def complete(self, lease, fits_path: Path, preview_path: Path) -> int | None:
        # The files are read whole into the multipart body, which every retry sends again.
        files = {"fits": ("stack.fits", Path(fits_path).read_bytes(), "application/fits"),
                 "preview": ("preview.png", Path(preview_path).read_bytes(), "image/png")}
        response = self._call("POST", f"/jobs/{lease.job_id}/complete", data={"lease": lease.token}, files=files)
        if response.status_code == 409:
            return None
        response.raise_for_status()
        return response.json()["stack_id"]

    def fail(self, lease, error: str, permanent: bool) -> str | None:
        response = self._call("POST", f"/jobs/{lease.job_id}/fail",
                              json={"lease": lease.token, "error": error, "permanent": permanent})
        return response.json().get("status") if response.status_code == 200 else None

    def give_back(self, lease) -> bool:
        response = self._call("POST", f"/jobs/{lease.job_id}/release", json={"lease": lease.token})
        return response.status_code == 200

    def wait_for_work(self, timeout: float) -> None:
        time.sleep(timeout)

    def release(self) -> None:
        """Nothing is held between calls."""
