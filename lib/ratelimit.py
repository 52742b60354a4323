"""Failed-login limits per account and per address, so passwords cannot be guessed at speed.

Kept in the app process's memory: the ingest app is one process (threads), and a restart
forgetting the counts costs an attacker nothing they could not get by waiting.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict, deque


class LoginLimiter:
    def __init__(self, max_failures: int = 10, window_s: float = 900.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> int:
        """Seconds until *keys* (e.g. ``user:alice``, ``ip:1.2.3.4``) may try again; 0 = now."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in keys:
                failures = self._trim(key, now)
                if len(failures) >= self.max_failures:
                    wait = max(wait, failures[0] + self.window_s - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._trim(key, now).append(now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

    def _trim(self, key: str, now: float) -> deque:
        failures = self._failures[key]
        while failures and failures[0] < now - self.window_s:
            failures.popleft()
        return failures
