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
import unicodedata

import sqlalchemy as sa

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


def username_key(username: str) -> str:
    """What makes two user names the same name: Unicode-compatibility folded (NFKC: full-width
    'ａ' is 'a') and case-folded ('Alice' is 'alice'). Unique in the database."""
    return unicodedata.normalize("NFKC", username).casefold() if isinstance(username, str) else ""


# ASCII look-alikes: names differing only in these read the same to people ('a1ice', 'alice')
_SKELETON = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "_": "-", ".": "-"})


def username_skeleton(username: str) -> str:
    return username_key(username).translate(_SKELETON).replace("rn", "m").replace("vv", "w")


def register(db, username: str, password: str) -> int:
    if isinstance(username, str):
        username = unicodedata.normalize("NFKC", username)
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise AccountError("user name: 3 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    users = db["users"]
    key, skeleton = username_key(username), username_skeleton(username)
    if _find_user(db, username) is not None:
        raise AccountError("that user name is taken")
    if any(username_skeleton(row["username"]) == skeleton
           for row in db.query("SELECT username FROM users")):
        raise AccountError("that user name is too like one that is taken")
    try:
        return users.insert({"username": username, "username_key": key, "password_hash": _hasher.hash(password),
                             "share_with_crowd": False, "created_at": now()})
    except Exception as exc:              # the unique index decides a race between two registrations
        if _find_user(db, username) is not None:
            raise AccountError("that user name is taken") from None
        raise exc


def _find_user(db, username: str) -> dict | None:
    """The user called *username* in any case or Unicode form; rows from before names were
    folded (no key yet, see ``fold_existing_names``) by their exact name."""
    return db["users"].find_one(username_key=username_key(username)) or db["users"].find_one(username=username)


def fold_existing_names(db) -> list[str]:
    """Give rows made before names were folded their key. A row whose key another row already
    has keeps none (both accounts keep working; that name logs in by its exact spelling only).
    Returns the names left without a key, to be logged."""
    left = []
    for row in list(db.query("SELECT id, username FROM users WHERE username_key IS NULL ORDER BY id")):
        try:
            with db as tx:
                tx["users"].update({"id": row["id"], "username_key": username_key(row["username"])}, ["id"])
        except sa.exc.IntegrityError:
            left.append(row["username"])
    return left


def authenticate(db, username: str, password: str) -> dict | None:
    """The user row when the password is right, else None (same work done either way)."""
    if not isinstance(username, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
        return None
    user = _find_user(db, username) if len(username) <= 64 else None
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
