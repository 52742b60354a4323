"""Accounts and tokens.

Passwords are hashed with Argon2id. Tokens (API bearer tokens, browser sessions and worker tokens)
are random strings handed out once; only their SHA-256 is stored, so a leaked database holds no
usable credential. A token's kind decides what it may do: a worker token cannot act as a user and a
user token cannot claim jobs.
"""
from __future__ import annotations

import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from lib.db import now

USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{2,31}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
USER, WEB, WORKER = "user", "web", "worker"
WEB_SESSION_SECONDS = 14 * 24 * 3600

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the answer time the same either way.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class AccountError(ValueError):
    """A request about an account that cannot be honoured; the message is safe to show."""


def register(db, username: str, password: str) -> int:
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise AccountError("user name: 3 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    users = db["users"]
    if users.find_one(username=username) is not None:
        raise AccountError("that user name is taken")
    try:
        return users.insert({"username": username, "password_hash": _hasher.hash(password),
                             "share_with_crowd": False, "created_at": now()})
    except Exception as exc:              # the unique index decides a race between two registrations
        if users.find_one(username=username) is not None:
            raise AccountError("that user name is taken") from None
        raise exc


def authenticate(db, username: str, password: str) -> dict | None:
    """The user row when the password is right, else None (same work done either way)."""
    if not isinstance(username, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
        return None
    user = db["users"].find_one(username=username)
    try:
        _hasher.verify(user["password_hash"] if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def issue_token(db, kind: str, *, user_id: int | None = None, name: str = "") -> str:
    token = secrets.token_urlsafe(32)
    db["api_tokens"].insert({"token_hash": _digest(token), "kind": kind, "user_id": user_id,
                             "name": name[:128], "created_at": now(), "revoked_at": None})
    return token


def token_row(db, token: str | None, kind: str) -> dict | None:
    """The live token row of *kind* for *token*, or None.

    The lookup is by SHA-256 of the token, an exact-match index hit: comparing digests leaks nothing
    useful about the token itself, unlike a character-by-character comparison of the token.
    """
    if not token or len(token) > 256:
        return None
    row = db["api_tokens"].find_one(token_hash=_digest(token))
    if row is None or row["kind"] != kind or row["revoked_at"] is not None:
        return None
    if kind == WEB and row["created_at"] < now() - WEB_SESSION_SECONDS:
        return None
    return row


def user_for_token(db, token: str | None, kind: str) -> dict | None:
    row = token_row(db, token, kind)
    return db["users"].find_one(id=row["user_id"]) if row else None


def revoke_token(db, token: str) -> None:
    db["api_tokens"].update({"token_hash": _digest(token), "revoked_at": now()}, ["token_hash"])


def revoke_worker_token(db, name: str) -> int:
    """Revoke every live worker token called *name*; returns how many."""
    rows = [r for r in db["api_tokens"].find(kind=WORKER, name=name) if r["revoked_at"] is None]
    for row in rows:
        db["api_tokens"].update({"id": row["id"], "revoked_at": now()}, ["id"])
    return len(rows)


def set_sharing(db, user_id: int, share: bool) -> None:
    db["users"].update({"id": user_id, "share_with_crowd": bool(share)}, ["id"])


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
