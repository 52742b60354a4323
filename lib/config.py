"""Settings, read once from the environment (prefix ``CROWDSKY_``).

Every setting has an embedded default so that a first run on a bare machine needs none:
SQLite for rows and local folders for the buffer and the archive, all under ``CROWDSKY_DATA_DIR``.
Secrets (storage credentials, a remote stacker's worker token) are only ever read from the
environment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get("CROWDSKY_" + name)
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"CROWDSKY_{name} must be a whole number, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"CROWDSKY_{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Credentials:
    """Access key + secret for S3, or user + password for WebDAV (token as password for shares)."""
    user: str | None
    secret: str | None = field(repr=False)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    buffer_url: str
    archive_url: str
    buffer_credentials: Credentials
    archive_credentials: Credentials
    lease_seconds: int = 300
    max_attempts: int = 3
    retry_backoff_seconds: float = 30.0
    session_expire_hours: float = 24.0
    raw_retention_days: int = 14
    reconcile_grace_seconds: float = 3600.0
    stack_every_minutes: int = 0
    max_frame_bytes: int = 64 * 1024 * 1024
    quota_bytes: int = 20 * 1024 ** 3
    poll_seconds: float = 1.0
    stacker_silent_seconds: float = 60.0
    api_url: str | None = None
    worker_token: str | None = field(default=None, repr=False)
    secure_cookies: bool = False
    trust_forwarded_for: bool = False


def _credentials(role: str) -> Credentials:
    return Credentials(user=_env(role + "_USER"), secret=_env(role + "_PASSWORD"))


def load() -> Settings:
    data_dir = Path(_env("DATA_DIR", "var")).resolve()
    return Settings(
        data_dir=data_dir,
        database_url=_env("DATABASE_URL", f"sqlite:///{data_dir / 'crowdsky.db'}"),
        buffer_url=_env("BUFFER_URL", (data_dir / "buffer").as_uri()),
        archive_url=_env("ARCHIVE_URL", (data_dir / "archive").as_uri()),
        buffer_credentials=_credentials("BUFFER"),
        archive_credentials=_credentials("ARCHIVE"),
        lease_seconds=_int("LEASE_SECONDS", 300),
        max_attempts=_int("MAX_ATTEMPTS", 3),
        retry_backoff_seconds=_float("RETRY_BACKOFF_SECONDS", 30.0),
        session_expire_hours=_float("SESSION_EXPIRE_HOURS", 24.0),
        raw_retention_days=_int("RAW_RETENTION_DAYS", 14),
        reconcile_grace_seconds=_float("RECONCILE_GRACE_SECONDS", 3600.0),
        stack_every_minutes=_int("STACK_EVERY_MINUTES", 0),
        max_frame_bytes=_int("MAX_FRAME_BYTES", 64 * 1024 * 1024),
        quota_bytes=_int("QUOTA_BYTES", 20 * 1024 ** 3),
        poll_seconds=_float("POLL_SECONDS", 1.0),
        stacker_silent_seconds=_float("STACKER_SILENT_SECONDS", 60.0),
        api_url=_env("API_URL"),
        worker_token=_env("WORKER_TOKEN"),
        secure_cookies=_env("SECURE_COOKIES", "0") == "1",
        trust_forwarded_for=_env("TRUST_FORWARDED_FOR", "0") == "1",
    )
