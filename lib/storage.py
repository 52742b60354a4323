"""Where bytes live: one small interface, one backend per URL scheme.

The buffer (raw frames waiting to be stacked) and the archive (finished stacks) are both a
``Storage``, opened from a URL in the settings::

    file:///var/lib/crowdsky/buffer                       a local folder (the embedded default)
    s3://bucket[/prefix]?endpoint=http://host:9000[&region=us-east-1][&secure=1]
                        [&expire_days=N][&public_endpoint=https://s3.example.org]
    webdav+https://cloud.example.org/remote.php/dav/files/alice/CrowdSky   (or webdav+http://)

Credentials never go into the URL: S3 access key + secret key, or WebDAV user + password, arrive
as ``Credentials`` (from ``CROWDSKY_BUFFER_USER``/``..._PASSWORD`` and the ``ARCHIVE`` pair).

Keys are ``/``-separated names made by the server (``raw/<owner>/<session>/<uuid>.fits``,
``stacks/<kind>/<job>/stack.fits``); ``check_key`` rejects anything that could leave the root.

Errors: ``NotFound`` (no such key), ``StorageUnavailable`` (the server cannot be reached: the
app answers 503 and the stacker retries later), ``StorageError`` for everything else (refused
credentials, full disk, ...), always with a message an operator can act on. Invalid keys and
malformed URLs are programming/configuration mistakes and raise ``ValueError``.

Uploads stream: ``put`` never holds a whole frame or stack in memory (S3 holds a few parts of
``S3_PART_SIZE``). Exceptions raised while *reading the caller's stream* (a client that hangs
up mid-upload) come out of ``put`` unchanged, so they are never mistaken for a storage failure.
"""
from __future__ import annotations

import logging

import os
import re
import secrets
import stat
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from webdav4.client import Client as WebDAVClient
from webdav4.multistatus import parse_multistatus_response

from lib.config import Credentials

__all__ = [
    "Storage", "StorageError", "NotFound", "StorageUnavailable",
    "open_storage", "check_key", "RAW_PREFIX",
]

CHUNK = 1024 * 1024                 # read/write granularity for streams
S3_PART_SIZE = 8 * 1024 * 1024      # S3 minimum is 5 MiB; a 4 MB frame goes up as one PUT
S3_PARALLEL_PARTS = 3               # parts in flight per upload (memory ~ (this + 2) x part size)
RAW_PREFIX = "raw/"                 # the key prefix of raw frames; the lifecycle rule covers it
LIFECYCLE_RULE_ID = "crowdsky-expire-raw"
RETRY_DELAYS = (0.5, 1.0)           # WebDAV: waits between the 3 attempts of one request
MAX_KEY_LENGTH = 1024               # S3's limit, applied everywhere so backends agree


class StorageError(Exception):
    """A storage operation failed; the message says what to fix."""


class NotFound(StorageError):
    """The key does not exist."""


class StorageUnavailable(StorageError):
    """The storage server cannot be reached (refused, timed out, 5xx): try again later."""


# --- keys and ranges -------------------------------------------------------------------------

def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative name, else raise ValueError.

    No empty, absolute or ``.``-led segments (covers ``.``, ``..`` and hidden temp files), no
    backslashes, NUL or other control characters: a key can never point outside the root.
    """
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid storage key {key!r}")
    if "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError(f"invalid storage key {key!r}: backslash or control character")
    if any(part == "" or part.startswith(".") for part in key.split("/")):
        raise ValueError(f"invalid storage key {key!r}: empty, absolute or dot segment")
    return key


def _is_key(name: str) -> bool:
    try:
        check_key(name)
        return True
    except ValueError:
        return False


def _folder(prefix: str) -> str:
    """``list`` prefixes name a folder: "raw/1" means "raw/1/" so it never matches "raw/10/..."."""
    if prefix in ("", "/"):
        return ""
    return check_key(prefix.rstrip("/")) + "/"


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid byte range start={start} end={end}")


def _sliced(chunks: Iterable[bytes], skip: int, limit: int | None) -> Iterator[bytes]:
    """Drop the first ``skip`` bytes of ``chunks`` and stop after ``limit`` bytes."""
    for chunk in chunks:
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        if limit is not None:
            chunk, limit = chunk[:limit], limit - min(limit, len(chunk))
        if chunk:
            yield chunk
        if limit == 0:
            return


class _SourceFailed(Exception):
    """Carries an exception raised by the caller's stream through a client library."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Source:
    """The caller's stream as a backend reads it.

    Counts bytes, stops after ``length`` (EOFError if the stream ends sooner), and answers
    ``read(n)`` with exactly ``n`` bytes until EOF: minio concatenates short reads one by one
    (quadratic on a 64 KiB socket stream). Anything the stream raises is wrapped in
    ``_SourceFailed`` so the backends' error translation lets it through untouched.
    """

    def __init__(self, stream: BinaryIO, length: int | None):
        if length is not None and length < 0:
            raise ValueError(f"invalid length {length}")
        self._stream, self._length, self.count = stream, length, 0

    def read(self, n: int = -1) -> bytes:
        left = None if self._length is None else self._length - self.count
        want = CHUNK if n is None or n < 0 else n
        want = want if left is None else min(want, left)
        parts, got = [], 0
        while got < want:
            try:
                data = self._stream.read(want - got)
            except Exception as exc:
                raise _SourceFailed(exc) from exc
            if not data:
                if left is not None and self.count + got < self._length:
                    raise _SourceFailed(EOFError(
                        f"stream ended after {self.count + got} of {self._length} bytes"))
                break
            parts.append(bytes(data))
            got += len(data)
        self.count += got
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def chunks(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            yield data


def _file_length(stream: BinaryIO) -> int | None:
    """The bytes left in ``stream`` if it is a regular file, else None (sockets, generators)."""
    try:
        info = os.fstat(stream.fileno())
        return info.st_size - stream.tell() if stat.S_ISREG(info.st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def _source_errors_unchanged():
    try:
        yield
    except _SourceFailed as failed:
        raise failed.error from None


def _env_hint(role: str) -> str:
    if role in ("buffer", "archive"):
        return f": check CROWDSKY_{role.upper()}_USER and CROWDSKY_{role.upper()}_PASSWORD"
    return ""


# --- the interface ---------------------------------------------------------------------------

class Storage(ABC):
    """A flat namespace of keys holding bytes. See the module docstring for URLs and errors."""

    role: str = "storage"   # "buffer" or "archive": only used to make messages precise

    @abstractmethod
    def put(self, key: str, stream: BinaryIO, length: int | None = None) -> int:
        """Store the bytes read from ``stream`` under ``key`` (replacing it); return the count.

        With ``length``, exactly that many bytes are read (EOFError if the stream is shorter);
        without it, until EOF. Readers never see a partial object, and a failed put leaves
        nothing behind under ``key`` (nor anything ``list`` shows).
        """

    @abstractmethod
    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of ``key`` in chunks, like ``data[start:end]``.

        Raises NotFound at call time (before the first chunk), so a caller can still answer 404.
        """

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object): header reads."""
        if length < 0:
            raise ValueError(f"invalid length {length}")
        return b"".join(self.iter_bytes(key, start, start + length))

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; raises NotFound."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine (deletes are retried by the janitor)."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under the folder ``prefix``, recursively, sorted. "" lists everything; "raw/1"
        means "raw/1/" (never "raw/10/...")."""

    def leftovers(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Temporary files of puts that never finished (the process was killed mid-write), as
        (name, Unix time of their last write): ``list`` never shows them, so only this finds them.
        Backends whose partial uploads vanish by themselves have none."""
        return iter(())

    def delete_leftover(self, name: str) -> None:
        """Remove one temporary file named by ``leftovers``."""

    def temporary_url(self, key: str, expires_s: int = 600) -> str | None:
        """A URL anyone can GET for ``expires_s`` seconds, or None where the backend has none."""
        check_key(key)
        return None

    @abstractmethod
    def ensure_ready(self) -> None:
        """Create the folder / bucket (and the lifecycle rule) if missing; check credentials."""

    @abstractmethod
    def describe(self) -> str:
        """The storage URL without secrets, for logs."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# --- file:// ---------------------------------------------------------------------------------

# The hidden temporary name FileStorage.put writes to: ".<name>.<12 hex>.part"
_PART = re.compile(r"\..+\.[0-9a-f]{12}\.part")


class FileStorage(Storage):
    """A local folder. Writes go to a hidden temp file beside the target, then ``os.replace``.

    Empty folders left by deletes are kept: removing them would race with a concurrent ``put``
    into the same folder, and they cost nothing.
    """

    def __init__(self, root: Path, role: str = "storage"):
        self.root, self.role = root, role

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def _errors(self, key: str | None = None):
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self.describe()}") from None
        except OSError as exc:
            raise StorageError(f"{self.role} folder {self.root}: {exc.strerror or exc}") from exc

    def put(self, key: str, stream: BinaryIO, length: int | None = None) -> int:
        path, source = self._path(key), _Source(stream, length)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
        with _source_errors_unchanged(), self._errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "xb") as f:
                    for chunk in source.chunks():
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())   # the uploader deletes its copy once we answer 201
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return source.count

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        _check_range(start, end)
        with self._errors(key):
            f = open(self._path(key), "rb")
        return self._read(f, start, end)

    def _read(self, f: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
        with f, self._errors():
            f.seek(start)
            yield from _sliced(iter(lambda: f.read(CHUNK), b""), 0,
                               None if end is None else end - start)

    def size(self, key: str) -> int:
        path = self._path(key)
        with self._errors(key):
            if path.is_dir():
                raise NotFound(f"{key} not found in {self.describe()}")
            return path.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            pass   # missing, or a folder (which is not a key)
        except OSError as exc:
            raise StorageError(f"{self.role} folder {self.root}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = _folder(prefix)
        top = self.root / folder
        keys = []
        with self._errors():
            for dirpath, _dirnames, filenames in os.walk(top):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                base = "" if rel == "." else rel + "/"
                keys.extend(base + name for name in filenames if _is_key(base + name))
        return iter(sorted(keys))

    def leftovers(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        found = []
        with self._errors():
            for dirpath, _dirnames, filenames in os.walk(self.root / _folder(prefix)):
                for name in filenames:
                    if _PART.fullmatch(name):
                        path = Path(dirpath) / name
                        with suppress(FileNotFoundError):     # finished or removed meanwhile
                            found.append((path.relative_to(self.root).as_posix(), path.stat().st_mtime))
        return iter(sorted(found))

    def delete_leftover(self, name: str) -> None:
        folder, _, base = name.rpartition("/")
        if not _PART.fullmatch(base):
            raise ValueError(f"{name!r} is not a temporary file of this storage")
        check_key(folder + "/x" if folder else "x")      # inside the root, no '..'
        with self._errors(name):
            (self.root / name).unlink(missing_ok=True)

    def ensure_ready(self) -> None:
        with self._errors():
            self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return self.root.as_uri()


# --- s3:// -----------------------------------------------------------------------------------

class S3Storage(Storage):
    """An S3 bucket (MinIO, SeaweedFS, AWS, ...) through the ``minio`` client.

    Keys live under an optional ``prefix`` inside the bucket. Retries of single requests are
    urllib3's (connection errors and 5xx); uploads are multipart in ``S3_PART_SIZE`` parts.
    """

    # Codes that mean "your key/secret is wrong or lacks the permission".
    _REFUSED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "InvalidToken", "ExpiredToken"}

    def __init__(self, *, bucket: str, prefix: str, endpoint: str, secure: bool, region: str,
                 credentials: Credentials | None, expire_days: int | None = None,
                 public_endpoint: tuple[str, bool] | None = None, role: str = "storage"):
        self.bucket, self.prefix, self.role = bucket, prefix, role
        self.endpoint, self.secure, self.region = endpoint, secure, region
        self.expire_days, self.public_endpoint = expire_days, public_endpoint
        user = credentials.user if credentials else None
        secret = credentials.secret if credentials else None
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=60),
            maxsize=16,   # the ingest app streams many uploads at once from its threads
            retries=urllib3.Retry(total=3, backoff_factor=0.2,
                                  status_forcelist=[500, 502, 503, 504]),
        )
        # A known region means minio never asks the server for the bucket's location.
        self.client = Minio(endpoint, access_key=user, secret_key=secret, secure=secure,
                            region=region, http_client=http)
        # Presigned URLs are computed locally; they must name the host browsers can reach.
        self._signer = self.client if public_endpoint is None else Minio(
            public_endpoint[0], access_key=user, secret_key=secret,
            secure=public_endpoint[1], region=region)

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextmanager
    def _errors(self, key: str | None = None):
        try:
            yield
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise NotFound(f"{key} not found in {self.describe()}") from None
            if exc.code in self._REFUSED:
                raise StorageError(f"{self.role} S3 server refused the credentials ({exc.code})"
                                   f"{_env_hint(self.role)}") from None
            if exc.code == "NoSuchBucket":
                raise StorageError(f"{self.role} S3 bucket {self.bucket!r} does not exist "
                                   f"(ensure_ready creates it)") from None
            raise StorageError(f"{self.role} S3 server: {exc.code}: {exc.message}") from exc
        except ServerError as exc:   # 5xx still failing after urllib3's retries
            raise StorageUnavailable(f"{self.role} S3 server {self._endpoint_url()} answered "
                                     f"{exc.status_code}") from exc
        except InvalidResponseError as exc:   # not S3 at all (a proxy page, wrong port, ...)
            raise StorageError(f"{self.role} S3 endpoint {self._endpoint_url()} "
                               f"gave a non-S3 answer: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc   # MaxRetryError wraps the last failure
            what = ("kept answering with server errors"
                    if isinstance(reason, urllib3.exceptions.ResponseError)
                    else f"unreachable: {type(reason).__name__}")
            raise StorageUnavailable(f"{self.role} S3 server {self._endpoint_url()} {what}") \
                from exc

    def put(self, key: str, stream: BinaryIO, length: int | None = None) -> int:
        name, source = self._name(key), _Source(stream, length)
        with _source_errors_unchanged(), self._errors(key):
            self.client.put_object(
                self.bucket, name, source, -1 if length is None else length,
                part_size=S3_PART_SIZE, num_parallel_uploads=S3_PARALLEL_PARTS)
        return source.count

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        _check_range(start, end)
        name = self._name(key)
        if end == start:          # S3 has no empty range; only existence matters
            self.size(key)
            return iter(())
        with self._errors(key):
            try:
                response = self.client.get_object(
                    self.bucket, name, offset=start, length=0 if end is None else end - start)
            except S3Error as exc:
                if exc.code == "InvalidRange":
                    return iter(())   # start is at or past the end of an existing object
                raise
        return self._stream(response)

    def _stream(self, response) -> Iterator[bytes]:
        try:
            with self._errors():
                yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()

    def size(self, key: str) -> int:
        with self._errors(key):
            return self.client.stat_object(self.bucket, self._name(key)).size

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.remove_object(self.bucket, self._name(key))   # S3 ignores missing keys

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = self.prefix + _folder(prefix)
        with self._errors():
            for obj in self.client.list_objects(self.bucket, prefix=folder, recursive=True):
                key = obj.object_name[len(self.prefix):]
                if not obj.is_dir and _is_key(key):
                    yield key

    def temporary_url(self, key: str, expires_s: int = 600) -> str | None:
        name = self._name(key)
        with self._errors(key):
            return self._signer.presigned_get_object(
                self.bucket, name, expires=timedelta(seconds=expires_s))

    def ensure_ready(self) -> None:
        with self._errors():
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket, location=self.region)
                except S3Error as exc:   # another role created it a moment ago
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            if self.expire_days:
                self._set_lifecycle_rule()

    def _set_lifecycle_rule(self) -> None:
        """Expire raws after N days: a safety net if the janitor never deletes them.

        Other rules on the bucket are kept; ours is replaced by its id.
        """
        current = self.client.get_bucket_lifecycle(self.bucket)
        rules = [r for r in (current.rules if current else []) if r.rule_id != LIFECYCLE_RULE_ID]
        rules.append(Rule(ENABLED, rule_filter=Filter(prefix=self.prefix + RAW_PREFIX),
                          rule_id=LIFECYCLE_RULE_ID,
                          expiration=Expiration(days=self.expire_days)))
        self.client.set_bucket_lifecycle(self.bucket, LifecycleConfig(rules))

    def _endpoint_url(self) -> str:
        return ("https://" if self.secure else "http://") + self.endpoint

    def describe(self) -> str:
        path = self.bucket + ("/" + self.prefix.rstrip("/") if self.prefix else "")
        query = f"endpoint={self._endpoint_url()}&region={self.region}"
        if self.expire_days:
            query += f"&expire_days={self.expire_days}"
        if self.public_endpoint:
            host, secure = self.public_endpoint
            query += f"&public_endpoint={'https' if secure else 'http'}://{host}"
        return f"s3://{path}?{query}"


# --- webdav+https:// -------------------------------------------------------------------------

_PROPFIND_BODY = ('<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop>'
                  '<d:resourcetype/><d:getcontentlength/></d:prop></d:propfind>')
_RETRY_STATUS = {429, 500, 502, 503, 504}


class WebDAVStorage(Storage):
    """A WebDAV folder (Nextcloud/ownCloud share, Apache mod_dav, wsgidav, ...).

    Each request is retried on connection errors and 429/5xx (an upload only while none of the
    stream has been sent). Parent folders are created one MKCOL at a time (servers answer 409
    to a nested MKCOL) and remembered, so a put into a known folder is a single PUT.
    """

    def __init__(self, base_url: str, credentials: Credentials | None, role: str = "storage"):
        self.base_url, self.role = base_url.rstrip("/"), role
        auth = (credentials.user, credentials.secret or "") if credentials and credentials.user \
            else None
        # webdav4 gives the WebDAV-aware httpx client and URL joining; retries are ours (above).
        self._dav = WebDAVClient(self.base_url, auth=auth, retry=False,
                                 timeout=httpx.Timeout(300, connect=10))
        self._http = self._dav.http
        self._folders: set[str] = set()   # folders known to exist ("" is the base)

    # One place sends requests: retries, then status -> exception.
    def _send(self, method: str, path: str, *, key: str | None = None,
              can_retry: Callable[[], bool] = lambda: True, folder: bool = False,
              stream: bool = False, ok: tuple[int, ...] = (), **kwargs) -> httpx.Response:
        url = self._dav.join_url(path, add_trailing_slash=folder)
        for delay in (*RETRY_DELAYS, None):
            try:
                request = self._http.build_request(method, url, **kwargs)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if delay is not None and can_retry():
                    time.sleep(delay)
                    continue
                raise StorageUnavailable(f"{self.role} WebDAV server {self.describe()} "
                                         f"unreachable: {type(exc).__name__}") from exc
            if response.status_code in _RETRY_STATUS and delay is not None and can_retry():
                response.close()
                time.sleep(delay)
                continue
            if response.status_code < 300 or response.status_code in ok:
                return response
            response.close()
            raise self._error(response.status_code, method, key or path)
        raise AssertionError("unreachable")

    def _error(self, status: int, method: str, what: str) -> StorageError:
        where = f"{self.role} WebDAV server"
        if status == 404:
            return NotFound(f"{what} not found in {self.describe()}")
        if status == 401:
            return StorageError(f"{where} refused the credentials (401){_env_hint(self.role)}")
        if status == 403:
            return StorageError(f"{where} forbids {method} {what} (403): check the share's "
                                "permissions (it must allow create, change and delete)")
        if status == 409:
            return StorageError(f"{where}: a parent folder of {what or self.describe()} "
                                "is missing (409)")
        if status == 507:
            return StorageError(f"{where} is out of space or over its quota (507)")
        if status in _RETRY_STATUS:
            return StorageUnavailable(f"{where} {self.describe()} answered {status}")
        return StorageError(f"{where} answered {status} to {method} {what}")

    def _propfind(self, path: str, depth: str, folder: bool = False):
        response = self._send("PROPFIND", path, folder=folder, content=_PROPFIND_BODY,
                              headers={"Depth": depth, "Content-Type": "application/xml"})
        return parse_multistatus_response(response).responses.values()

    def _stat(self, key: str):
        """The resource's properties; NotFound if missing or if it is a folder."""
        props = next(iter(self._propfind(check_key(key), "0"))).properties
        if props.collection:
            raise NotFound(f"{key} not found in {self.describe()} (it is a folder)")
        return props

    def _make_folders(self, key: str) -> None:
        parts = key.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder not in self._folders:
                # 405: it exists already (another writer, or made before this process started)
                self._send("MKCOL", folder, folder=True, ok=(405,))
                self._folders.add(folder)

    def put(self, key: str, stream: BinaryIO, length: int | None = None) -> int:
        # Send Content-Length whenever it is known (given, or a regular file's size): some
        # servers (Nextcloud behind PHP-FPM) store chunked uploads as empty files.
        length = _file_length(stream) if length is None else length
        source = _Source(stream, length)
        self._make_folders(check_key(key))
        # Upload under a hidden temporary name (never a valid key, so never listed), then MOVE
        # it into place: readers never see a partial file, and a server that keeps what arrived
        # of an aborted upload keeps it under that name only.
        folder, _, name = key.rpartition("/")
        temp = (folder + "/" if folder else "") + f".{name}.{secrets.token_hex(6)}.upload"
        headers = {} if length is None else {"Content-Length": str(length)}
        try:
            with _source_errors_unchanged():
                self._send("PUT", temp, key=key, headers=headers, content=source.chunks(),
                           can_retry=lambda: source.count == 0)
            self._send("MOVE", temp, key=key, headers={
                "Destination": str(self._dav.join_url(key)), "Overwrite": "T"})
        except BaseException as exc:
            self._folders.clear()   # a 409 means a parent folder was removed behind our back
            if not isinstance(exc, StorageUnavailable):
                with suppress(StorageError):
                    self._send("DELETE", temp, ok=(404,), can_retry=lambda: False)
            raise
        return source.count

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        _check_range(start, end)
        check_key(key)
        if end == start:
            self.size(key)
            return iter(())
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        response = self._send("GET", key, key=key, headers=headers, stream=True, ok=(416,))
        if response.status_code == 416:   # start at or past the end of an existing file
            response.close()
            return iter(())
        # 200 instead of 206: the server ignored Range, so cut the range out ourselves.
        skip = start if response.status_code == 200 else 0
        return self._stream(response, skip, None if end is None else end - start)

    def _stream(self, response: httpx.Response, skip: int, limit: int | None) -> Iterator[bytes]:
        try:
            yield from _sliced(response.iter_bytes(CHUNK), skip, limit)
        except httpx.TransportError as exc:
            raise StorageUnavailable(f"{self.role} WebDAV server {self.describe()} broke off "
                                     f"a download: {type(exc).__name__}") from exc
        finally:
            response.close()

    def size(self, key: str) -> int:
        return self._stat(key).content_length or 0

    def exists(self, key: str) -> bool:
        try:
            self._stat(key)
            return True
        except NotFound:
            return False

    def delete(self, key: str) -> None:
        # DELETE on a folder is recursive: make sure the key is a file first.
        if self.exists(key):
            self._send("DELETE", key, key=key, ok=(404,))

    def list(self, prefix: str = "") -> Iterator[str]:
        # Depth: 1 walk, folder by folder: many servers refuse "Depth: infinity".
        keys, pending = [], [_folder(prefix)]
        while pending:
            folder = pending.pop()
            try:
                entries = self._propfind(folder, "1", folder=True)
            except NotFound:
                continue
            for entry in entries:
                name = entry.path_relative_to(self._dav.base_url)
                if name.strip("/") == folder.strip("/") or name == "/":
                    continue   # the folder itself
                if entry.properties.collection:
                    pending.append(name.strip("/") + "/")
                elif _is_key(name):
                    keys.append(name)
        return iter(sorted(keys))

    def ensure_ready(self) -> None:
        try:
            self._propfind("", "0", folder=True)
        except NotFound:
            self._send("MKCOL", "", folder=True, ok=(405,))
        self._folders.add("")

    def describe(self) -> str:
        return "webdav+" + self.base_url


# --- opening by URL --------------------------------------------------------------------------

def open_storage(url: str, credentials: Credentials | None = None, *,
                 role: str = "storage") -> Storage:
    """The ``Storage`` for ``url`` (see the module docstring). Nothing touches the network here;
    ``ensure_ready()`` does. ``role`` ("buffer"/"archive") only sharpens error messages."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.username or parts.password:
        raise ValueError(f"{role} URL must not contain credentials: set "
                         f"CROWDSKY_{role.upper()}_USER and _PASSWORD instead")
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"{role} URL {url!r}: use file:///absolute/path")
        return FileStorage(Path(unquote(parts.path)), role=role)
    if scheme == "s3":
        return _open_s3(parts, credentials, role)
    if scheme in ("webdav+http", "webdav+https"):
        if not parts.hostname or parts.query:
            raise ValueError(f"{role} URL {url!r}: use webdav+https://host/path (no options)")
        base = f"{scheme[len('webdav+'):]}://{parts.netloc}{parts.path}"
        return WebDAVStorage(base, credentials, role=role)
    raise ValueError(f"{role} URL {url!r}: unknown scheme; use file:///path, "
                     "s3://bucket?endpoint=..., or webdav+https://host/path")


def _endpoint(value: str, secure_default: bool) -> tuple[str, bool]:
    """"http://host:9000" -> ("host:9000", False); a bare "host:9000" keeps the default."""
    if "://" not in value:
        return value, secure_default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"S3 endpoint {value!r}: use http(s)://host[:port]")
    return parts.netloc, parts.scheme == "https"


def _open_s3(parts, credentials: Credentials | None, role: str) -> S3Storage:
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "region", "secure", "expire_days", "public_endpoint"}
    if unknown or not parts.netloc:
        raise ValueError(f"{role} S3 URL: needs s3://bucket[/prefix]?endpoint=...; "
                         f"unknown options {sorted(unknown)}")
    secure = query.get("secure", "1").lower() not in ("0", "false", "no")
    endpoint, secure = _endpoint(query.get("endpoint", "s3.amazonaws.com"), secure)
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
        prefix += "/"
    try:
        expire_days = int(query["expire_days"]) if "expire_days" in query else None
    except ValueError:
        raise ValueError(f"{role} S3 URL: expire_days must be a whole number") from None
    public = query.get("public_endpoint")
    return S3Storage(bucket=parts.netloc, prefix=prefix, endpoint=endpoint, secure=secure,
                     region=query.get("region", "us-east-1"), credentials=credentials,
                     expire_days=expire_days, role=role,
                     public_endpoint=_endpoint(public, True) if public else None)


def delete_quietly(storage: Storage, keys) -> None:
    """Delete objects that are no longer needed; one that cannot be deleted now is logged and left
    for the janitor's reconcile pass, never allowed to fail the work that made it unneeded."""
    for key in keys:
        try:
            storage.delete(key)
        except StorageError as exc:
            logging.getLogger("crowdsky.storage").warning("could not delete %s: %s", key, exc)
