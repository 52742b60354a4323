"""Small HTTP helpers shared by the ingest app's routes: who is asking, CSRF, errors, byte ranges."""
from __future__ import annotations

import hmac
import json
import re
import secrets

import bottle

from lib import accounts

SESSION_COOKIE = "crowdsky_session"
CSRF_COOKIE = "crowdsky_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class HTTPProblem(Exception):
    """An error answer: JSON ``{"error": message}`` for the API, an error page for people."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def json_response(payload, status: int = 200):
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps(payload, default=str)


JSON_LIMIT = 64 * 1024     # bytes of a JSON request body


def json_body() -> dict:
    """The request's JSON object body, or a 400 naming what is wrong with it."""
    if bottle.request.content_length > JSON_LIMIT:          # refused before a byte is read
        raise HTTPProblem(413, f"JSON body too large (at most {JSON_LIMIT} bytes)")
    raw = read_body(JSON_LIMIT + 1)
    if len(raw) > JSON_LIMIT:
        raise HTTPProblem(413, f"JSON body too large (at most {JSON_LIMIT} bytes)")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        # json.loads lets "\ud800" (half of a UTF-16 pair) through; no database or hash takes it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPProblem(400, "body is not valid JSON: it holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    except (ValueError, RecursionError) as exc:
        raise HTTPProblem(400, f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise HTTPProblem(400, "body must be a JSON object")
    return data


def read_body(limit: int) -> bytes:
    """Up to *limit* bytes of the request body; a body that ends before its Content-Length (the
    client gave up) is a 400, not a server error."""
    if "bottle.request.body" in bottle.request.environ:     # already read (and checked) by Bottle
        return bottle.request.body.read(limit)
    length = bottle.request.content_length
    stream = bottle.request.environ["wsgi.input"]
    want = min(limit, length) if length >= 0 else limit
    parts, got = [], 0
    while got < want:
        part = stream.read(want - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    if length >= 0 and got < min(limit, length):
        raise HTTPProblem(400, f"the request body ended after {got} of its {length} bytes")
    return b"".join(parts)


def field(data: dict, name: str, kind, required: bool = True):
    """``data[name]`` if it has the JSON type *kind* (a type or tuple of types), else a 400."""
    value = data.get(name)
    if value is None and not required:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join({str: "string", int: "number", float: "number", bool: "boolean"}.get(k, k.__name__)
                            for k in kinds)
        raise HTTPProblem(400, f"'{name}' must be a {names}")
    return value


# --- who is asking --------------------------------------------------------------------------

def bearer_token() -> str | None:
    header = bottle.request.get_header("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def current_user(db) -> dict | None:
    """The user behind a Bearer token or the browser session cookie.

    A cookie-authenticated state change must also carry the CSRF token; a Bearer token cannot be
    sent by another site's page, so it needs none.
    """
    token = bearer_token()
    if token is not None:
        return accounts.user_for_token(db, token, accounts.USER)
    user = accounts.user_for_token(db, bottle.request.get_cookie(SESSION_COOKIE), accounts.WEB)
    if user is not None and bottle.request.method in UNSAFE_METHODS:
        check_csrf()
    return user


def start_browser_session(db, user_id: int, secure: bool) -> None:
    token = accounts.issue_token(db, accounts.WEB, user_id=user_id, name="browser")
    bottle.response.set_cookie(SESSION_COOKIE, token, path="/", httponly=True, samesite="lax",
                               secure=secure, max_age=accounts.WEB_SESSION_SECONDS)


def end_browser_session(db) -> None:
    token = bottle.request.get_cookie(SESSION_COOKIE)
    if token:
        accounts.revoke_token(db, token)
    bottle.response.delete_cookie(SESSION_COOKIE, path="/")


# --- CSRF: double submit of a random cookie value --------------------------------------------

def csrf_token(secure: bool) -> str:
    """The visitor's CSRF token, set as a cookie on first sight; forms and scripts echo it back."""
    token = bottle.request.get_cookie(CSRF_COOKIE)
    if not token or not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", token):
        token = secrets.token_urlsafe(32)
        bottle.request.cookies[CSRF_COOKIE] = token   # later calls in this request see it
        bottle.response.set_cookie(CSRF_COOKIE, token, path="/", httponly=True, samesite="strict",
                                   secure=secure)
    return token


def check_csrf() -> None:
    expected = bottle.request.get_cookie(CSRF_COOKIE) or ""
    sent = bottle.request.get_header(CSRF_HEADER) or bottle.request.forms.get(CSRF_FIELD) or ""
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise HTTPProblem(403, "the form has expired or did not come from this site; reload the page and try again")


# --- byte ranges ----------------------------------------------------------------------------

def byte_range(total: int) -> tuple[int, int] | None:
    """The single ``Range: bytes=a-b`` asked for, as (start, end exclusive); None for the whole."""
    header = bottle.request.get_header("Range")
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(0, total - int(last)), total
    else:
        start = int(first)
        end = min(total, int(last) + 1) if last else total
    if start >= total or start >= end:
        raise HTTPProblem(416, f"range not satisfiable: the file has {total} bytes")
    return start, end
