"""Failed-login limits per account and per address, so passwords cannot be guessed at speed.

Kept in the app process's memory: the ingest app is one process (threads), and a restart
forgetting the counts costs an attacker nothing they could not get by waiting.

An attempt is counted when it *starts* (``begin``), not when its password check ends: the check
takes tens of milliseconds, and counting afterwards let 200 guesses sent at once all through a
limit of 10. A right password takes its own attempt back (``succeeded``), and only its own.

Memory stays bounded whatever keys an attacker makes up: a key is kept only while it has failures
inside the window (at most ``max_failures`` of them), and expired keys are swept out.
"""
from __future__ import annotations

import threading
import time
from collections import deque


class LoginLimiter:
    def __init__(self, max_failures: int = 10, window_s: float = 900.0):
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, deque] = {}     # key -> Unix-monotonic times of failures, oldest first
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def retry_after(self, *keys: str) -> int:
        """Seconds until *keys* (e.g. ``user:alice``, ``ip:1.2.3.4``) may try again; 0 = now."""
        with self._lock:
            return self._wait(keys, time.monotonic())

    def begin(self, *keys: str) -> tuple[int, float | None]:
        """Start an attempt: ``(wait, None)`` if one of *keys* must wait *wait* seconds, else
        ``(0, stamp)``, the attempt already counted as a failure of every key until ``succeeded``."""
        now = time.monotonic()
        with self._lock:
            wait = self._wait(keys, now)
            if wait:
                return wait, None
            for key in keys:
                self._failures.setdefault(key, deque(maxlen=self.max_failures)).append(now)
            self._sweep(now)
            return 0, now

    def failed(self, *keys: str) -> None:
        """Count a failure that was not begun with ``begin``."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, deque(maxlen=self.max_failures)).append(now)
            self._sweep(now)

    def succeeded(self, stamp: float, *keys: str) -> None:
        """The right password: the attempt begun at *stamp* no longer counts against *keys*.
        Earlier failures still count: a login of the owner's does not give a guesser racing it
        (or guessing between the owner's logins) more tries."""
        with self._lock:
            for key in keys:
                failures = self._failures.get(key)
                if failures is None:
                    continue
                try:
                    failures.remove(stamp)
                except ValueError:
                    pass
                if not failures:
                    del self._failures[key]

    def __len__(self) -> int:
        """How many keys are kept (for tests of the memory bound)."""
        with self._lock:
            return len(self._failures)

    def _wait(self, keys, now: float) -> int:
        wait = 0.0
        for key in keys:
            failures = self._trim(key, now)
            if failures is not None and len(failures) >= self.max_failures:
                wait = max(wait, failures[0] + self.window_s - now)
        return int(wait) + 1 if wait > 0 else 0

    def _trim(self, key: str, now: float) -> deque | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] < now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def _sweep(self, now: float) -> None:
        # At most once a minute: drop every key whose failures have all left the window.
        if now - self._swept < 60.0:
            return
        self._swept = now
        for key in list(self._failures):
            self._trim(key, now)
