"""A job source for stackers on machines with neither database nor storage credentials.

It speaks the ingest app's worker API with a worker token (``CROWDSKY_API_URL`` and
``CROWDSKY_WORKER_TOKEN``); the stacker's loop above it is the same as in direct mode.
"""
from __future__ import annotations

import time
from pathlib import Path

import requests

from lib.queue import Lease

RETRIES = 3


class RemoteError(Exception):
    pass


class RemoteSource:
    def __init__(self, api_url: str, token: str, timeout: float = 60):
        self.api = api_url.rstrip("/") + "/api/v1/worker"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        """One API call, retried on connection errors and 5xx answers (the app may be restarting)."""
        for attempt in range(1, RETRIES + 1):
            try:
                response = self.http.request(method, self.api + path, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as exc:
                if attempt == RETRIES:
                    raise RemoteError(f"cannot reach {self.api}: {exc}") from None
            else:
                if response.status_code < 500 or attempt == RETRIES:
                    if response.status_code in (401, 403):
                        raise RemoteError(f"the app refused the worker token ({response.status_code})")
                    return response
            time.sleep(2 ** attempt)
        raise AssertionError("unreachable")

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
        with open(fits_path, "rb") as fits_file, open(preview_path, "rb") as png_file:
            response = self._call("POST", f"/jobs/{lease.job_id}/complete", data={"lease": lease.token},
                                  files={"fits": ("stack.fits", fits_file, "application/fits"),
                                         "preview": ("preview.png", png_file, "image/png")})
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
