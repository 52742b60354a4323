"""CrowdSky's ingest app: accounts, uploads into the buffer, finalize, status, gallery, downloads.

Routes are thin: parse the request, call ``lib``, render a page or JSON. Run it with
``python ingest_app.py [--host H] [--port P]``; settings come from ``CROWDSKY_*`` variables.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import bottle

from lib import accounts, atlas, catalog, config, gallery as gallery_lib, groups, jobs, logs, metrics, queue, seestar_compat, skymap, stacks, uploads
from lib import batches, pictures, serving, techcard, zipstream
from lib.fitsheader import FrameError
from lib.db import release
from lib.services import Services
from lib.storage import NotFound, StorageError, StorageUnavailable
from lib.ratelimit import LoginLimiter
from lib.web import (HTTPProblem, bearer_token, byte_range, check_csrf, csrf_token, current_user, end_browser_session, field,
                     json_body, json_response, start_browser_session, SECURITY_HEADERS)

ROOT = Path(__file__).resolve().parent
bottle.TEMPLATE_PATH[:] = [str(ROOT / "templates")]
log = logging.getLogger("crowdsky.ingest")

app = bottle.Bottle()


svc: Services = None  # what every request needs; set once by configure()


def configure(settings: config.Settings) -> bottle.Bottle:
    global svc
    svc = Services.open(settings)
    metrics.watch_queue(svc.db)
    for name in accounts.fold_existing_names(svc.db):
        log.warning("user %r shares its case-folded name with an older account: it logs in by its exact "
                    "spelling only", name)
    release(svc.db)
    return app


# --- plumbing: errors, headers, who is asking ------------------------------------------------

def is_api() -> bool:
    return bottle.request.path.startswith("/api/")


@app.hook("before_request")
def start_request():
    bottle.request.environ["crowdsky.request_id"] = uuid.uuid4().hex[:12]
    bottle.request.environ["crowdsky.started"] = time.monotonic()


@app.hook("after_request")
def finish_request():
    release(svc.db)
    for name, value in SECURITY_HEADERS.items():
        bottle.response.set_header(name, value)
    if bottle.request.path == "/atlas":       # Aladin Lite: WebAssembly, and the styles it sets on its own elements
        bottle.response.set_header("Content-Security-Policy", ATLAS_CSP)
    environ = bottle.request.environ
    request_id = environ.get("crowdsky.request_id", "-")
    bottle.response.set_header("X-Request-Id", request_id)
    log.info("request", extra={
        "request_id": request_id, "method": bottle.request.method, "path": bottle.request.path,
        "status": bottle.response.status_code,
        "duration_ms": round(1000 * (time.monotonic() - environ.get("crowdsky.started", time.monotonic())), 1)})


def problem(status: int, message: str):
    if is_api():
        return json_response({"error": message}, status)
    bottle.response.status = status
    return page("error.tpl", title="Something went wrong", status=status, message=message)


def guarded(handler):
    """Turn the library's refusals into clean 4xx/5xx answers that name the fault."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    def wrapper(*args, **kwargs):
        try:
            check_body_size()
            check_path_is_utf8()
            if any(isinstance(v, int) and not 0 <= v < 2 ** 63 for v in kwargs.values()):
                raise HTTPProblem(404, "not found: no such id")     # no database row can have it
            return handler(*args, **kwargs)
        except bottle.MultipartError as exc:
            return problem(400, f"the form cannot be read: {exc}")
        except UnicodeDecodeError as exc:   # a form's field or file name that is not UTF-8
            return problem(400, f"the request holds text that is not valid UTF-8 (byte {exc.start}: {exc.reason})")
        except bottle.HTTPError as exc:     # Bottle refusing a body it cannot parse
            return problem(exc.status_code, str(exc.body or exc.status_line))
        except bottle.HTTPResponse:
            raise                           # redirects and answers Bottle already made
        except HTTPProblem as exc:
            return problem(exc.status, str(exc))
        except (uploads.UploadError, jobs.JobError) as exc:
            return problem(exc.status, str(exc))
        except accounts.AccountError as exc:
            return problem(400, str(exc))
        except FrameError as exc:
            return problem(400, str(exc))
        except NotFound as exc:
            return problem(404, f"not found: {exc}")
        except StorageUnavailable as exc:
            log.error("storage unavailable: %s", exc)
            return problem(503, "storage is unavailable right now; nothing was lost, try again shortly")
        except StorageError as exc:
            log.error("storage error: %s", exc)
            return problem(502, f"storage error: {exc}")
        except DBAPIError as exc:
            # Down, restarting, or the connection was cut: a 503 the client may retry. Anything
            # else (a constraint violated, bad SQL) is a bug and stays a 500.
            if not (exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError))):
                raise
            log.error("database unavailable: %s", " ".join(str(exc.orig or exc).split())[:300])
            message = "the database is unavailable right now; nothing was lost, try again shortly"
            bottle.response.set_header("Retry-After", "5")
            if is_api():
                return json_response({"error": message}, 503)
            bottle.response.status = 503    # not page(): it would ask the database who is logged in
            return bottle.template("error.tpl", user=None, csrf=csrf_token(svc.settings.secure_cookies),
                                   title="Something went wrong", status=503, message=message)
        except Exception:
            # A bug: logged once with its traceback; the caller gets the request id to quote, never
            # the traceback. Rendered without asking the database who is logged in (it may be the fault).
            request_id = bottle.request.environ.get("crowdsky.request_id", "-")
            log.exception("unhandled error in %s %s (request %s)", bottle.request.method,
                          bottle.request.path, request_id)
            message = f"an internal error occurred; it has been logged as request {request_id}"
            if is_api():
                return json_response({"error": message}, 500)
            bottle.response.status = 500
            return bottle.template("error.tpl", user=None, csrf=csrf_token(svc.settings.secure_cookies),
                                   title="Something went wrong", status=500, message=message)
    wrapper.__name__ = handler.__name__
    return wrapper


app.install(lambda callback: guarded(callback))


def check_path_is_utf8() -> None:
    """Bottle decodes the path leniently, dropping bytes that are not UTF-8 (``%FF%FE.fit`` would
    become ``.fit``): refuse such a path instead of acting on a name nobody sent."""
    raw = bottle.request.environ.get("REQUEST_URI", "").split("?", 1)[0]
    try:
        urllib.parse.unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
    except UnicodeError:
        raise HTTPProblem(400, "the URL path (a file name?) is not valid UTF-8") from None


SMALL_BODY_BYTES = 64 * 1024          # forms and JSON: log in, register, settings, worker calls
FORM_OVERHEAD_BYTES = 64 * 1024       # multipart boundaries and fields around one uploaded file


def check_body_size() -> None:
    """Refuse a body by its declared length before any of it is read (413).

    Frames go to ``ingest_frame``, which names the per-frame limit itself; the Seestar client's
    multipart frame or telescope stack may be one frame plus its form; a stack result from a
    worker is not bounded here (worker tokens are the operator's). Everything else is a small form
    or JSON body.
    """
    request = bottle.request
    length = request.content_length
    path = request.path
    if length < 0 and "chunked" in request.get_header("Transfer-Encoding", "").lower():
        length = 2 ** 63        # unknown: only the routes with no limit here may stream it
    if length <= SMALL_BODY_BYTES or request.method == "PUT" and path.startswith("/api/v1/sessions/"):
        return
    if path.startswith("/api/v1/worker/"):
        return
    limit = SMALL_BODY_BYTES
    if path == "/api/raw_upload.php" and request.query.get("action") == "file" or path == "/api/upload_stack.php":
        limit = svc.settings.max_frame_bytes + FORM_OVERHEAD_BYTES
    if length == 2 ** 63:
        raise HTTPProblem(411, f"send a Content-Length (at most {limit} bytes) instead of a chunked body")
    if length > limit:
        raise HTTPProblem(413, f"the request body is {length} bytes; this route takes at most {limit}")


limiter = LoginLimiter()


def client_address() -> str:
    """The caller's address: the connection's, or, behind a proxy CrowdSky is told to trust, the
    address that proxy put last in X-Forwarded-For (anything before it the client could forge)."""
    if svc.settings.trust_forwarded_for:
        forwarded = bottle.request.get_header("X-Forwarded-For", "")
        if forwarded.strip():
            return forwarded.split(",")[-1].strip()
    return bottle.request.environ.get("REMOTE_ADDR", "")


def login(username: str, password: str) -> dict | None:
    """Check a password, within the failed-login limits of the account and of the address."""
    account, address = f"user:{accounts.username_key(username)}", f"ip:{client_address()}"
    wait, attempt = limiter.begin(account, address)       # counted from now, whatever happens
    if wait:
        bottle.response.set_header("Retry-After", str(wait))
        raise HTTPProblem(429, f"too many failed logins; try again in {wait} s")
    user = accounts.authenticate(svc.db, username, password)
    if user is not None:
        limiter.succeeded(attempt, account, address)
    return user


def user_or_none() -> dict | None:
    return current_user(svc.db)


def require_user() -> dict:
    user = current_user(svc.db)
    if user is None:
        if is_api():
            raise HTTPProblem(401, "log in first: send 'Authorization: Bearer <token>' (POST /api/v1/token)")
        bottle.redirect("/login?next=" + bottle.request.path)
    return user


_UNSET = object()


def page(template: str, **values) -> str:
    """Render *template* with the viewer (looked up from the cookie unless the handler already
    knows it, anonymous included) and the CSRF token every form needs."""
    user = values.pop("user", _UNSET)
    if user is _UNSET:
        user = accounts.user_for_token(svc.db, bottle.request.get_cookie("crowdsky_session"), accounts.WEB)
    return bottle.template(template, user=user, csrf=csrf_token(svc.settings.secure_cookies), **values)


# --- pages ---------------------------------------------------------------------------------

@app.get("/")
def index():
    recent = stacks.list_stacks(svc.db, None, limit=8)     # shared stacks only: no viewer
    return page("index.tpl", title="CrowdSky", recent=recent, numbers=gallery_lib.site_numbers(svc.db))


@app.get("/register")
def register_form():
    return page("register.tpl", title="Create an account", error=None, username="")


@app.post("/register")
def register_submit():
    form = bottle.request.forms
    check_csrf()
    try:
        user_id = accounts.register(svc.db, form.getunicode("username", ""), form.getunicode("password", ""))
    except accounts.AccountError as exc:
        bottle.response.status = 400
        return page("register.tpl", title="Create an account", error=str(exc),
                    username=form.getunicode("username", ""))
    start_browser_session(svc.db, user_id, svc.settings.secure_cookies)
    bottle.redirect("/upload")


@app.get("/login")
def login_form():
    return page("login.tpl", title="Log in", error=None, next=_next_path())


@app.post("/login")
def login_submit():
    check_csrf()
    form = bottle.request.forms
    user = login(form.getunicode("username", ""), form.getunicode("password", ""))
    if user is None:
        bottle.response.status = 401
        return page("login.tpl", title="Log in", error="wrong user name or password", next=_next_path())
    start_browser_session(svc.db, user["id"], svc.settings.secure_cookies)
    bottle.redirect(_next_path())


_SAME_SITE_PATH = re.compile(r"/(?![/\\])[!-\[\]-~]*")   # printable ASCII but '\'; not '//' nor '/\'


def _next_path() -> str:
    """Where to go after logging in: an absolute path on this site only. Browsers drop tabs and
    line breaks and read '\\' as '/', so '/\t/evil.example' would leave the site: anything but
    printable ASCII is refused, as are '//' and backslashes."""
    target = bottle.request.params.getunicode("next", "/upload") or "/upload"
    return target if _SAME_SITE_PATH.fullmatch(target) else "/upload"


@app.post("/logout")
def logout():
    check_csrf()
    end_browser_session(svc.db)
    bottle.redirect("/")


@app.get("/upload")
def upload_page():
    user = require_user()
    return page("upload.tpl", title="Upload frames", user=user,
                max_frame_bytes=svc.settings.max_frame_bytes)


@app.get("/status")
def status_page():
    user = require_user()
    sessions = [s for s in jobs.owner_sessions(svc.db, user["id"]) if s["status"] != batches.DISMISSED]
    return page("status.tpl", title="Your uploads", user=user, sessions=sessions,
                numbers=batches.numbers(svc.db, user["id"]), stackers=stacker_state())


@app.post("/batches/<session_id:int>/dismiss")
def dismiss_batch_form(session_id):
    user = require_user()
    check_csrf()
    try:
        batches.dismiss_empty(svc.db, user["id"], session_id)
    except batches.BatchError as exc:
        raise HTTPProblem(exc.status, str(exc)) from None
    bottle.redirect("/status")


@app.post("/jobs/<job_id:int>/retry")
def retry_job_form(job_id):
    user = require_user()
    jobs.retry(svc.db, user["id"], job_id)
    bottle.redirect("/status")


@app.post("/jobs/<job_id:int>/delete")
def delete_job_form(job_id):
    user = require_user()
    jobs.delete(svc, user["id"], job_id)
    bottle.redirect("/status")


@app.post("/stacks/<stack_id:int>/delete")
def delete_stack_form(stack_id):
    user = require_user()
    jobs.delete_stack(svc, user["id"], stack_id)
    bottle.redirect("/stacks")


@app.get("/stacks")
def gallery():
    user = user_or_none()
    viewer = user["id"] if user else None
    query = bottle.request.query
    filters = gallery_lib.Filters.from_query(query)
    listing = gallery_lib.page(svc.db, viewer, filters, before=gallery_lib.cursor(query.get("before")),
                               after=gallery_lib.cursor(query.get("after")))
    return page("stacks.tpl", title="Stacks", user=user, filters=filters, listing=listing,
                objects=stacks.objects(svc.db, viewer), owners=gallery_lib.owners(svc.db, viewer))


@app.get("/targets")
def targets_page():
    user = user_or_none()
    listing = gallery_lib.targets(svc.db, user["id"] if user else None)
    return page("targets.tpl", title="Targets", user=user, listing=listing, g=gallery_lib)


@app.get("/targets/<name:path>")
def target_page(name):
    user = user_or_none()
    found = gallery_lib.target(svc.db, user["id"] if user else None, name)
    if found is None:
        raise HTTPProblem(404, f"no stacks of {name[:128]!r}")
    return page("target.tpl", title=name, user=user, t=found, g=gallery_lib)


@app.get("/stacks/<stack_id:int>")
def stack_page(stack_id):
    user = user_or_none()
    stack = _visible_stack(user, stack_id)
    frames = gallery_lib.frames_in_time_order(svc.db, stack_id)
    header = techcard.read_header(svc.archive, stack["fits_key"]) if stack["fits_key"] else None
    return page("stack.tpl", title=gallery_lib.page_title(stack), user=user, stack=stack, frames=frames,
                rejections=gallery_lib.rejections(frames), group=gallery_lib.group_details(svc.db, stack),
                g=gallery_lib, card=techcard.card(stack, header), stretch=pictures.stretch_defaults(header))


@app.get("/stacks/<stack_id:int>/stack.fits")
def stack_fits(stack_id):
    stack = _visible_stack(user_or_none(), stack_id)
    link = svc.archive.temporary_url(stack["fits_key"], expires_s=600)
    if link:
        bottle.redirect(link, 302)
    return _stream_from_archive(stack["fits_key"], "application/fits", stacks.download_name(stack))


@app.get("/stacks/<stack_id:int>/preview.png")
def stack_preview(stack_id):
    stack = _visible_stack(user_or_none(), stack_id)
    return _stream_from_archive(stack["preview_key"], "image/png", None)


@app.get("/stacks/<stack_id:int>/thumb.jpg")
def stack_thumbnail(stack_id):
    stack = _visible_stack(user_or_none(), stack_id)
    thumb = gallery_lib.thumbnail(svc.archive, gallery_lib.thumbnail_cache(svc.settings), stack)
    if isinstance(thumb, bytes):
        bottle.response.content_type = "image/jpeg"
        return thumb
    return bottle.static_file(thumb.name, root=str(thumb.parent), mimetype="image/jpeg")


@app.get("/stacks/<stack_id:int>/rendition.bin")
def stack_rendition(stack_id):
    """The 16-bit calibrated picture the stack page's stretch control redraws (format: lib/pictures.py)."""
    stack = _visible_stack(user_or_none(), stack_id)
    meta, data = pictures.rendition(svc.archive, pictures.rendition_cache(svc.settings), stack)
    bottle.response.content_type = "application/octet-stream"
    bottle.response.set_header("X-Rendition", json.dumps(meta))
    bottle.response.set_header("Cache-Control", "private, max-age=3600")
    return data


@app.get("/stacks/<stack_id:int>/picture.<fmt:re:jpg|tiff>")
def stack_picture(stack_id, fmt):
    """The full-size picture as shown, with ?black= (sky sigmas below the sky) and ?strength= (asinh β)."""
    stack = _visible_stack(user_or_none(), stack_id)
    try:
        settings = pictures.Settings.from_query(bottle.request.query)
    except pictures.PictureError as exc:
        raise HTTPProblem(400, str(exc)) from None
    data = pictures.download(svc.archive, stack, settings, fmt)
    bottle.response.content_type = "image/jpeg" if fmt == "jpg" else "image/tiff"
    bottle.response.set_header("Content-Disposition",
                               f'attachment; filename="{pictures.download_name(stack, fmt)}"')
    return data


@app.route("/stacks.zip", method=["GET", "POST"])
def stacks_zip():
    """The FITS of the chosen stacks (``ids=1,2,3``) in one ZIP, streamed; every one must be visible."""
    if bottle.request.method == "POST":
        check_csrf()
    user = user_or_none()
    rows = gallery_lib.visible_stacks(svc.db, user["id"] if user else None,
                                      gallery_lib.parse_ids(bottle.request.params.getunicode("ids", "")))
    bottle.response.content_type = "application/zip"
    bottle.response.set_header("Content-Disposition", f'attachment; filename="{gallery_lib.zip_name(rows)}"')
    return zipstream.stream(gallery_lib.zip_members(svc.archive, rows))


@app.get("/map")
def sky_map_page():
    return page("map.tpl", title="Sky map", user=user_or_none())


@app.get("/atlas")
def atlas_page():
    target = bottle.request.query.getunicode("target", "") or ""
    return page("atlas.tpl", title="Crowd atlas", user=user_or_none(), target=target[:64])


ATLAS_CSP = SECURITY_HEADERS["Content-Security-Policy"].replace(
    "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'").replace(
    "connect-src 'self'", "connect-src 'self' data: blob:")      # its WebAssembly is a data: URL it fetches
HIPS_TYPES = {".png": "image/png", ".fits": "application/fits", "properties": "text/plain; charset=utf-8"}


@app.get("/hips/crowd/<path:path>")
def hips_crowd(path):
    """The crowd atlas (lib/atlas.py): public data, cached by browsers and proxies for a few minutes
    and revalidated by ETag (a tile changes when a crowd stack over it does)."""
    key = atlas.parse_path(path)
    if key is None:
        raise HTTPProblem(404, "not part of the atlas: Norder<k>/Dir<d>/Npix<n>.png, properties or Moc.fits")
    try:
        data = b"".join(svc.archive.iter_bytes(key))
    except NotFound:
        raise HTTPProblem(404, f"the atlas has no {path} (no shared data there yet)") from None
    tag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    bottle.response.set_header("ETag", tag)
    bottle.response.set_header("Cache-Control", "public, max-age=300")
    bottle.response.set_header("Access-Control-Allow-Origin", "*")      # HiPS viewers elsewhere may read it
    bottle.response.content_type = next(t for end, t in HIPS_TYPES.items() if path.endswith(end))
    if tag in [t.strip() for t in bottle.request.headers.get("If-None-Match", "").split(",")]:
        bottle.response.status = 304
        return b""
    return data


_REGIONS = threading.BoundedSemaphore(1)      # one region mosaic at a time: the largest holds a few hundred MB for seconds


def _float_param(name: str) -> float:
    text = bottle.request.query.get(name, "")
    try:
        value = float(text)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be a number of degrees (got {text[:32]!r})") from None
    if not math.isfinite(value):
        raise HTTPProblem(400, f"{name} must be a finite number of degrees")
    return value


@app.get("/atlas/region.fits")
def atlas_region():
    """A region of the crowd atlas as a FITS mosaic of the crowd data (lib/atlas.py region_fits)."""
    ra, dec, width, height = (_float_param(n) for n in ("ra", "dec", "width", "height"))
    try:
        atlas.region_grid(ra, dec, width, height)
    except atlas.RegionError as exc:
        raise HTTPProblem(400, str(exc)) from None
    if not _REGIONS.acquire(timeout=60):
        raise HTTPProblem(503, "another region is being made; try again in a minute")
    try:
        with tempfile.TemporaryDirectory(prefix="crowdsky-region-") as work:
            data = atlas.region_fits(svc.db, svc.archive, ra, dec, width, height, Path(work))
    finally:
        _REGIONS.release()
    if data is None:
        raise HTTPProblem(404, "no shared crowd data in this region")
    bottle.response.content_type = "application/fits"
    bottle.response.set_header("Content-Disposition",
                               f'attachment; filename="crowdsky-atlas-{ra:.3f}{dec:+.3f}.fits"')
    return data


@app.get("/api/v1/resolve")
def api_resolve():
    name = bottle.request.query.getunicode("name", "") or ""
    if not name.strip():
        raise HTTPProblem(400, "give the object's name: ?name=M94")
    if len(name) > 64:
        raise HTTPProblem(400, "the name is longer than 64 characters")
    found = catalog.resolve(name)
    if found is None:
        raise HTTPProblem(404, f"no object named {name[:64]!r} in the catalogue (OpenNGC: Messier, NGC, IC)")
    return json_response(found)


@app.get("/api/v1/atlas/footprints")
def api_atlas_footprints():
    """The crowd stacks in the atlas: id, object, frames, exposure and the four corners on the sky."""
    return json_response({"stacks": atlas.footprints(svc.db)})


def _visible_stack(user, stack_id) -> dict:
    stack = stacks.get_stack(svc.db, user["id"] if user else None, stack_id)
    if stack is None:
        raise HTTPProblem(404, f"no stack {stack_id}")
    return stack


def _stream_from_archive(key: str, content_type: str, filename: str | None):
    total = svc.archive.size(key)
    wanted = byte_range(total)
    start, end = wanted if wanted else (0, total)
    bottle.response.content_type = content_type
    bottle.response.set_header("Accept-Ranges", "bytes")
    bottle.response.set_header("Content-Length", str(end - start))
    if filename:
        bottle.response.set_header("Content-Disposition", f'attachment; filename="{filename}"')
    if wanted:
        bottle.response.status = 206
        bottle.response.set_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
    return svc.archive.iter_bytes(key, start, end)


@app.get("/account")
def account_page():
    user = require_user()
    return page("account.tpl", title="Your account", user=user)


@app.post("/account")
def account_submit():
    user = require_user()
    groups.set_sharing(svc, user["id"], bottle.request.forms.get("share_with_crowd") == "on")
    bottle.redirect("/account?saved=1")


# --- JSON API ------------------------------------------------------------------------------

@app.get("/healthz")
def healthz():
    return json_response({"ok": True})


@app.get("/readyz")
def readyz():
    """Ready (200) when the database, the buffer and the archive all answer; 503 otherwise.

    ``stackers`` says whether any stacker was seen lately. It does not change the answer: this app
    serves uploads and pages without one, and a balancer should not take it out of service for a
    missing stacker. Monitoring should alert on it (and on ``pending`` jobs that stay).
    """
    checks = {}
    for name, probe in (("database", lambda: list(svc.db.query("SELECT 1 AS one"))),
                        ("buffer", lambda: svc.buffer.exists("readyz-probe")),
                        ("archive", lambda: svc.archive.exists("readyz-probe"))):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:          # any failure means "not ready", and says why
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in checks.values())
    stackers = stacker_state() if checks["database"] == "ok" else {"text": "unknown", "seen_s_ago": None}
    return json_response({"ready": ready, **checks, "stackers": stackers["text"],
                          "stackers_seen_s_ago": stackers["seen_s_ago"]}, 200 if ready else 503)


def stacker_state() -> dict:
    """{"seen_s_ago": seconds or None, "silent": bool, "text": "ok (seen 3 s ago)" | "none seen for 75 s" | ...}"""
    try:
        ago = queue.stackers_silent_for(svc.db)
    except Exception as exc:             # the database check above says what is wrong
        return {"seen_s_ago": None, "silent": True, "text": f"unknown: {type(exc).__name__}"}
    if ago is None:
        return {"seen_s_ago": None, "silent": True, "text": "none seen yet"}
    silent = ago > svc.settings.stacker_silent_seconds
    text = f"none seen for {ago:.0f} s" if silent else f"ok (seen {ago:.0f} s ago)"
    return {"seen_s_ago": round(ago, 1), "silent": silent, "text": text}


@app.get("/metrics")
def prometheus_metrics():
    bottle.response.content_type = "text/plain; version=0.0.4; charset=utf-8"
    return metrics.exposition()


@app.post("/api/v1/register")
def api_register():
    data = json_body()
    user_id = accounts.register(svc.db, field(data, "username", str), field(data, "password", str))
    return json_response({"id": user_id, "username": svc.db["users"].find_one(id=user_id)["username"]}, 201)


@app.post("/api/v1/token")
def api_token():
    data = json_body()
    user = login(field(data, "username", str), field(data, "password", str))
    if user is None:
        raise HTTPProblem(401, "wrong user name or password")
    token = accounts.issue_token(svc.db, accounts.USER, user_id=user["id"], name="api")
    return json_response({"token": token})


@app.post("/api/v1/sessions")
def api_create_session():
    user = require_user()
    return json_response({"id": uploads.create_session(svc.db, user["id"])}, 201)


@app.get("/api/v1/sessions/<session_id:int>")
def api_session(session_id):
    user = require_user()
    session = uploads.get_session(svc.db, user["id"], session_id)
    frames = [uploads.frame_view(svc.db, f) for f in svc.db["frames"].find(session_id=session_id, order_by="id")]
    return json_response({"id": session["id"], "status": session["status"], "frames": frames})


@app.put("/api/v1/sessions/<session_id:int>/frames/<filename:path>")
def api_upload_frame(session_id, filename):
    user = require_user()
    length = bottle.request.content_length
    try:
        result = uploads.ingest_frame(
            svc.db, svc.buffer, svc.settings, owner_id=user["id"], session_id=session_id,
            filename=filename, body=bottle.request.environ["wsgi.input"],
            content_length=length if length >= 0 else None)
    except uploads.UploadError:
        metrics.uploads.labels("rejected").inc()
        raise
    metrics.uploads.labels("created" if result.created else "duplicate").inc()
    if result.created:
        metrics.upload_bytes.inc(result.frame["size"])
    return json_response(result.frame, 201 if result.created else 200)


@app.get("/api/v1/frames")
def api_frames_by_sha256():
    user = require_user()
    sha256 = bottle.request.query.get("sha256", "")
    return json_response({"frames": uploads.frames_with_sha256(svc.db, user["id"], sha256)})


@app.post("/api/v1/sessions/<session_id:int>/finalize")
def api_finalize(session_id):
    user = require_user()
    return json_response({"jobs": uploads.finalize(svc, user["id"], session_id)["jobs"]})


@app.get("/api/v1/status")
def api_status():
    user = require_user()
    return json_response({"sessions": jobs.owner_sessions(svc.db, user["id"]), "stackers": stacker_state()})


@app.get("/api/v1/jobs/<job_id:int>")
def api_job(job_id):
    user = require_user()
    return json_response(jobs.job_view(jobs.owned_job(svc.db, user["id"], job_id)))


@app.post("/api/v1/jobs/<job_id:int>/retry")
def api_retry_job(job_id):
    user = require_user()
    jobs.retry(svc.db, user["id"], job_id)
    return json_response(jobs.job_view(jobs.owned_job(svc.db, user["id"], job_id)))


@app.delete("/api/v1/jobs/<job_id:int>")
def api_delete_job(job_id):
    user = require_user()
    jobs.delete(svc, user["id"], job_id)
    return json_response({"deleted": job_id})


@app.delete("/api/v1/stacks/<stack_id:int>")
def api_delete_stack(stack_id):
    user = require_user()
    jobs.delete_stack(svc, user["id"], stack_id)
    return json_response({"deleted": stack_id})


@app.get("/api/v1/stacks")
def api_stacks():
    user = user_or_none()
    rows = stacks.list_stacks(svc.db, user["id"] if user else None,
                              object_name=bottle.request.query.getunicode("object", "") or None)
    return json_response({"stacks": [stacks.api_view(r) for r in rows]})


@app.get("/api/v1/stacks/<stack_id:int>")
def api_stack(stack_id):
    stack = _visible_stack(user_or_none(), stack_id)
    view = stacks.api_view(stack)
    view["frame_list"] = [{"filename": f["filename"], "used": bool(f["used"]), "reason": f["reason"],
                           "fwhm_px": f["fwhm_px"], "stars": f["stars"], "date_obs": f["date_obs"]}
                          for f in gallery_lib.frames_in_time_order(svc.db, stack_id)]
    view |= stacks.sky_view(stack)
    view["photometry"] = stacks.photometry_view(stack)
    # the preview PNG is cropped: pages that draw on it in FITS pixels need to know to what
    view["preview"] = stacks.preview_box(techcard.read_header(svc.archive, stack["fits_key"]))
    if stack["kind"] in (groups.DEEP, groups.CROWD):
        view["contributors"] = groups.credits(svc.db, stack_id)
        view["chunk_stacks"] = groups.contributing_stacks(svc.db, stack_id)
    return json_response(view)


@app.get("/api/v1/skymap")
def api_skymap():
    user = user_or_none()
    return json_response(skymap.points(svc.db, user["id"] if user else None))


@app.patch("/api/v1/me")
def api_me():
    user = require_user()
    share = field(json_body(), "share_with_crowd", bool)
    groups.set_sharing(svc, user["id"], share)
    return json_response({"username": user["username"], "share_with_crowd": share})


@app.get("/api/v1/openapi.json")
def api_openapi():
    return bottle.static_file("openapi.json", root=str(ROOT / "lib"), mimetype="application/json")


# --- worker API: remote stackers with a worker token ------------------------------------

def require_worker() -> dict:
    row = accounts.token_row(svc.db, bearer_token(), accounts.WORKER)
    if row is None:
        raise HTTPProblem(401, "a worker token is required (Authorization: Bearer <worker token>)")
    return row


@app.post("/api/v1/worker/claim")
def worker_claim():
    name = require_worker()["name"]
    worker = field(json_body(), "worker", str, required=False) or name
    lease = queue.claim(svc.db, f"{name}/{worker}", svc.settings.lease_seconds, direct=False)
    if lease is None:
        bottle.response.status = 204
        return ""
    return json_response({"job": jobs.job_view(lease.job) | {"chunk_id": lease.job["chunk_id"],
                                                            "payload": lease.job.get("payload")},
                          "lease": lease.token, "expires": lease.expires})


@app.get("/api/v1/worker/jobs/<job_id:int>/inputs")
def worker_inputs(job_id):
    require_worker()
    lease = jobs.current_lease(svc.db, job_id, bottle.request.query.get("lease"))
    return json_response({"inputs": [{"id": i["id"], "filename": i["filename"], "size": i["size"]}
                                     for i in jobs.job_inputs(svc.db, lease.job)]})


@app.get("/api/v1/worker/jobs/<job_id:int>/inputs/<input_id>")
def worker_input_bytes(job_id, input_id):
    require_worker()
    lease = jobs.current_lease(svc.db, job_id, bottle.request.query.get("lease"))
    item = next((i for i in jobs.job_inputs(svc.db, lease.job) if i["id"] == input_id), None)
    if item is None:
        raise HTTPProblem(404, f"job {job_id} has no input {input_id!r}")
    store = svc.buffer if item["store"] == "buffer" else svc.archive
    bottle.response.content_type = "application/fits"
    bottle.response.set_header("Content-Length", str(store.size(item["key"])))
    return store.iter_bytes(item["key"])


@app.post("/api/v1/worker/jobs/<job_id:int>/heartbeat")
def worker_heartbeat(job_id):
    require_worker()
    data = json_body()
    lease = jobs.current_lease(svc.db, job_id, field(data, "lease", str))
    progress = field(data, "progress", (int, float))
    if not queue.heartbeat(svc.db, lease, float(progress), field(data, "message", str, required=False) or "",
                           svc.settings.lease_seconds):
        raise HTTPProblem(409, f"the lease on job {job_id} is no longer yours")
    return json_response({"ok": True, "expires": lease.expires})


@app.post("/api/v1/worker/jobs/<job_id:int>/complete")
def worker_complete(job_id):
    require_worker()
    lease = jobs.current_lease(svc.db, job_id, bottle.request.forms.get("lease"))
    files = bottle.request.files
    if files.get("fits") is None or files.get("preview") is None:
        raise HTTPProblem(400, "send the stack as form files 'fits' and 'preview'")
    with tempfile.TemporaryDirectory(prefix="crowdsky-result-") as tmp:
        fits_path, preview_path = Path(tmp) / "stack.fits", Path(tmp) / "preview.png"
        files["fits"].save(str(fits_path))
        files["preview"].save(str(preview_path))
        stack_id = jobs.complete_job(svc, lease, fits_path, preview_path)
    if stack_id is None:
        raise HTTPProblem(409, f"the lease on job {job_id} is no longer yours")
    return json_response({"stack_id": stack_id})


@app.post("/api/v1/worker/jobs/<job_id:int>/release")
def worker_release(job_id):
    """A stopping stacker hands its job back: pending again, the attempt not counted."""
    require_worker()
    lease = jobs.current_lease(svc.db, job_id, field(json_body(), "lease", str))
    if not queue.release(svc.db, lease):
        raise HTTPProblem(409, f"the lease on job {job_id} is no longer yours")
    return json_response({"status": "pending"})


@app.post("/api/v1/worker/jobs/<job_id:int>/fail")
def worker_fail(job_id):
    require_worker()
    data = json_body()
    lease = jobs.current_lease(svc.db, job_id, field(data, "lease", str))
    status = queue.fail(svc.db, lease, field(data, "error", str)[:2000], svc.settings.retry_backoff_seconds,
                        permanent=bool(data.get("permanent")))
    if status is None:
        raise HTTPProblem(409, f"the lease on job {job_id} is no longer yours")
    return json_response({"status": status})


# --- the seestarpy client's API (the original service's paths; HTTP Basic auth) ------------

def require_basic_user() -> dict:
    credentials = bottle.request.auth
    user = login(*credentials) if credentials else None
    if user is None:
        bottle.response.set_header("WWW-Authenticate", 'Basic realm="CrowdSky"')
        raise HTTPProblem(401, "wrong user name or password")
    return user


@app.get("/api/my_stacks.php")
def compat_my_stacks():
    user = require_basic_user()
    wanted = bottle.request.query.getunicode("object", "") or None
    return json_response(seestar_compat.stack_listing(svc.db, user["id"], wanted))


@app.get("/api/download_stack.php")
def compat_download_stack():
    user = require_basic_user()
    stack = seestar_compat.stack_for_key(svc.db, user["id"], bottle.request.query.getunicode("chunk_key", ""))
    return _stream_from_archive(stack["fits_key"], "application/fits", stacks.download_name(stack))


@app.post("/api/upload_stack.php")
def compat_upload_stack():
    user = require_basic_user()
    return json_response(seestar_compat.upload_stack(svc, user["id"], bottle.request.files.get("file"),
                                                     bottle.request.forms))


@app.post("/api/raw_upload.php")
def compat_raw_upload():
    user = require_basic_user()
    action = bottle.request.query.get("action", "")
    form = bottle.request.forms
    if action == "start":
        return json_response({"ok": True, "session_token": str(uploads.create_session(svc.db, user["id"]))})
    if action == "file":
        return json_response(seestar_compat.raw_file(svc, user["id"], form.get("session_token"),
                                                     bottle.request.files.get("file")))
    if action == "finalize":
        return json_response(seestar_compat.raw_finalize(svc, user["id"], form.get("session_token"),
                                                         overwrite=form.get("overwrite") == "1"))
    raise HTTPProblem(400, f"unknown action {action!r}: use start, file or finalize")


@app.get("/static/<path:path>")
def static(path):
    return bottle.static_file(path, root=str(ROOT / "static"))


@app.error(404)
@app.error(405)
def not_found(error):
    return problem(error.status_code, error.body or "not found")


# --- serving -------------------------------------------------------------------------------

def worker_token_command(argv) -> int:
    """``worker-token add NAME`` prints a new token once; ``worker-token revoke NAME`` ends them."""
    parser = argparse.ArgumentParser(prog="ingest_app.py worker-token",
                                     description="Create or revoke tokens for remote stackers.")
    parser.add_argument("action", choices=["add", "revoke"])
    parser.add_argument("name", help="a name for the stacker machine, e.g. its host name")
    args = parser.parse_args(argv)
    from lib.db import connect
    db = connect(config.load().database_url)
    if args.action == "add":
        print(accounts.issue_token(db, accounts.WORKER, name=args.name))
    else:
        print(f"revoked {accounts.revoke_worker_token(db, args.name)} token(s) named {args.name!r}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker-token"]:
        return worker_token_command(argv[1:])
    if argv[:1] == ["migrate"]:     # create or complete the schema, then exit (`make migrate`)
        from lib.db import migrate
        migrate(config.load().database_url)
        return 0
    parser = argparse.ArgumentParser(description="CrowdSky ingest app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--slow-client-seconds", type=float, default=10.0,
                        help="a request's headers must arrive within this time, and its body at a "
                             "steady pace after it (see lib/serving.py)")
    args = parser.parse_args(argv)
    logs.setup("ingest")
    configure(config.load())
    server = serving.make_server((args.host, args.port), app, threads=args.threads,
                                 slow_client_s=args.slow_client_seconds)
    signal.signal(signal.SIGTERM, _stop_serving)
    try:
        server.prepare()                 # binds: a port in use is one clear line, not a traceback
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (another program uses the port? set --port / PORT=)",
                  args.host, args.port, exc)
        return 1
    except KeyboardInterrupt:            # stopped while starting
        return 0
    log.info("serving on http://%s:%d", args.host, args.port)
    try:
        server.serve()
    except KeyboardInterrupt:
        log.info("stopping: finishing requests in flight")
        server.stop()
    return 0


def _stop_serving(*_):
    # The serve loop runs in this (main) thread: leave it the way Ctrl-C does, then stop cleanly.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
