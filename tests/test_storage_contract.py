"""The Storage contract, run against every backend (local folder, SeaweedFS S3, wsgidav WebDAV).

Backend-specific checks (presigned URLs, lifecycle rules, refused credentials, unreachable
servers, memory use of a 200 MB upload) follow the shared ones.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

from lib.config import Credentials
from lib.storage import NotFound, StorageError, StorageUnavailable, check_key, open_storage
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class GeneratedStream:
    """A non-seekable reader (like a socket) serving ``total`` bytes in chunks of at most 64 KiB."""

    def __init__(self, data: bytes = b"", total: int | None = None, fail_after: int | None = None,
                 error: Exception | None = None):
        self.data, self.total = data, len(data) if total is None else total
        self.pos, self.fail_after, self.error = 0, fail_after, error

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise self.error
        n = min(65536 if n is None or n < 0 else n, 65536, self.total - self.pos)
        start = self.pos % len(self.data) if self.data else 0
        chunk = (self.data[start:start + n] if self.data else b"\0" * n)
        self.pos += len(chunk)
        return chunk


def stored(storage, key: str) -> bytes:
    return b"".join(storage.iter_bytes(key))


# --- the shared contract ---------------------------------------------------------------------

def test_round_trip_streams_a_non_seekable_reader(storage):
    data = os.urandom(12 * 1024 * 1024 + 123)   # more than one S3 part
    assert storage.put("raw/1/2/frame.fits", GeneratedStream(data)) == len(data)
    assert storage.size("raw/1/2/frame.fits") == len(data)
    assert hashlib.sha256(stored(storage, "raw/1/2/frame.fits")).digest() == \
        hashlib.sha256(data).digest()


def test_put_with_length_reads_exactly_that_many_bytes(storage):
    assert storage.put("a/b.bin", io.BytesIO(b"0123456789"), length=4) == 4
    assert stored(storage, "a/b.bin") == b"0123"


def test_put_replaces_and_stores_empty_objects(storage):
    storage.put("k/x", io.BytesIO(b"first version"))
    storage.put("k/x", io.BytesIO(b"second"))
    assert stored(storage, "k/x") == b"second"
    assert storage.put("k/empty", io.BytesIO(b"")) == 0
    assert storage.exists("k/empty") and storage.size("k/empty") == 0
    assert stored(storage, "k/empty") == b""


RANGES = [(0, None), (0, 0), (0, 1), (7, 7), (5, 17), (99, None), (99, 100), (0, 100),
          (0, 1000), (100, None), (100, 200), (150, None), (50, 10_000)]


def test_ranged_reads_behave_like_slicing(storage):
    data = bytes(range(100))
    storage.put("r/obj", io.BytesIO(data))
    for start, end in RANGES:
        assert b"".join(storage.iter_bytes("r/obj", start, end)) == data[start:end], (start, end)
    assert storage.read_range("r/obj", 0, 8) == data[:8]
    assert storage.read_range("r/obj", 96, 8) == data[96:]
    assert storage.read_range("r/obj", 200, 8) == b""
    for start, end in [(-1, None), (5, 4)]:
        with pytest.raises(ValueError):
            storage.iter_bytes("r/obj", start, end)


def test_size_exists_delete(storage):
    assert not storage.exists("d/one")
    storage.put("d/one", io.BytesIO(b"12345"))
    assert storage.exists("d/one") and storage.size("d/one") == 5
    storage.delete("d/one")
    assert not storage.exists("d/one")
    storage.delete("d/one")          # missing is fine
    storage.delete("never/was/here")


def test_missing_keys_raise_not_found_at_call_time(storage):
    with pytest.raises(NotFound):
        storage.size("no/such")
    with pytest.raises(NotFound):
        storage.iter_bytes("no/such")      # no next(): raised before the first chunk
    with pytest.raises(NotFound):
        storage.iter_bytes("no/such", 0, 0)
    with pytest.raises(NotFound):
        storage.read_range("no/such", 0, 10)
    assert not storage.exists("no/such")


def test_a_folder_is_not_a_key(storage):
    storage.put("f/inner/leaf", io.BytesIO(b"x"))
    assert not storage.exists("f/inner")
    with pytest.raises(NotFound):
        storage.size("f/inner")
    storage.delete("f/inner")        # must not delete the folder's contents
    assert storage.exists("f/inner/leaf")


def test_list_by_prefix(storage):
    keys = ["raw/1/s1/a.fits", "raw/1/s1/b.fits", "raw/1/s2/c.fits", "raw/10/s1/d.fits",
            "raw/1x", "stacks/chunk/7/stack.fits", "top"]
    for key in keys:
        storage.put(key, io.BytesIO(key.encode()))
    assert list(storage.list("")) == sorted(keys)
    assert list(storage.list("raw/1/")) == ["raw/1/s1/a.fits", "raw/1/s1/b.fits", "raw/1/s2/c.fits"]
    assert list(storage.list("raw/1")) == list(storage.list("raw/1/"))   # never raw/10 or raw/1x
    assert list(storage.list("raw/1/s1/")) == ["raw/1/s1/a.fits", "raw/1/s1/b.fits"]
    assert list(storage.list("stacks/")) == ["stacks/chunk/7/stack.fits"]
    assert list(storage.list("nothing/here/")) == []
    storage.delete("raw/1/s2/c.fits")
    assert list(storage.list("raw/1/s2/")) == []


BAD_KEYS = ["", "/abs", "a/../b", "..", "../x", "a/./b", "a//b", "a/", "a\\b", "a\0b",
            "a/.hidden", "tab\there", "x" * 1025]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_are_rejected(storage, key):
    with pytest.raises(ValueError):
        storage.put(key, io.BytesIO(b"x"))
    for call in (storage.size, storage.exists, storage.delete, storage.iter_bytes,
                 storage.temporary_url):
        with pytest.raises(ValueError):
            call(key)
    assert list(storage.list()) == []


def test_valid_keys_are_accepted():
    for key in ["raw/1/2/0b6c1f.fits", "stacks/chunk/17/preview.png", "a", "with space/ü.fits"]:
        assert check_key(key) == key


def test_errors_of_the_callers_stream_pass_through_and_store_nothing(storage):
    broken = GeneratedStream(os.urandom(1024), total=10 * 1024 * 1024, fail_after=9 * 1024 * 1024,
                             error=ConnectionResetError("client went away"))
    with pytest.raises(ConnectionResetError):
        storage.put("up/broken", broken)
    assert not storage.exists("up/broken")
    with pytest.raises(EOFError):
        storage.put("up/short", io.BytesIO(b"abc"), length=10)
    assert not storage.exists("up/short")
    assert list(storage.list()) == []      # no temp files left behind either


def test_temporary_url(storage):
    storage.put("t/file.png", io.BytesIO(b"PNG bytes"))
    url = storage.temporary_url("t/file.png", expires_s=60)
    if storage.describe().startswith("s3://"):
        assert url.startswith("http://")
        response = requests.get(url, timeout=10)   # no credentials: the signature is the key
        assert response.status_code == 200 and response.content == b"PNG bytes"
    else:
        assert url is None


# --- URLs --------------------------------------------------------------------------------------

def test_open_storage_rejects_bad_urls(tmp_path):
    for url in ["ftp://host/x", "file://relative/path", "s3://?endpoint=http://h:1",
                "s3://b?endpoint=http://h:1&colour=red", "webdav+https://user:pw@host/x",
                "s3://b?expire_days=soon"]:
        with pytest.raises(ValueError):
            open_storage(url, role="archive")
    assert open_storage((tmp_path / "a b").as_uri()).describe() == (tmp_path / "a b").as_uri()


def test_describe_has_no_secrets(tmp_path):
    creds = Credentials("someone", "s3cr3t-value")
    for url in ["s3://b/p?endpoint=http://h:9000&expire_days=3", "webdav+https://h/dav/x",
                (tmp_path / "st").as_uri()]:
        st = open_storage(url, creds)
        assert st.describe().split("://")[0] == url.split("://")[0]
        assert "s3cr3t-value" not in st.describe() + repr(st)


def test_s3_url_options():
    st = open_storage("s3://bkt/some/prefix?endpoint=https://s3.example.org&region=eu-1"
                      "&expire_days=9", Credentials("AK", "SECRETSECRET"))
    assert st.describe() == ("s3://bkt/some/prefix?endpoint=https://s3.example.org"
                             "&region=eu-1&expire_days=9")
    bare = open_storage("s3://bkt?endpoint=minio:9000&secure=0")
    assert bare.describe().startswith("s3://bkt?endpoint=http://minio:9000")


# --- S3 only -----------------------------------------------------------------------------------

def test_s3_prefix_keeps_keys_inside(s3_server):
    bucket = s3_server.new_bucket()
    st = s3_server.open(bucket + "/crowdsky")
    st.put("raw/1/a", io.BytesIO(b"a"))
    s3_server.minio().put_object(bucket, "elsewhere/b", io.BytesIO(b"b"), 1)
    assert [o.object_name for o in s3_server.minio().list_objects(bucket, recursive=True)] == \
        ["crowdsky/raw/1/a", "elsewhere/b"]
    assert list(st.list()) == ["raw/1/a"]


def test_s3_presigned_urls_name_the_public_endpoint(s3_server):
    bucket = s3_server.new_bucket()
    s3_server.open(bucket).put("stacks/x/1/preview.png", io.BytesIO(b"png"))
    public = f"http://localhost:{s3_server.port}"     # the same server under another name
    st = s3_server.open(bucket, public_endpoint=public)
    url = st.temporary_url("stacks/x/1/preview.png")
    assert url.startswith(public + "/")
    assert requests.get(url, timeout=10).content == b"png"


def test_s3_lifecycle_rule_is_set_when_asked(s3_server):
    bucket = s3_server.new_bucket()
    st = s3_server.open(bucket, expire_days=3)
    st.ensure_ready()   # again: the rule is replaced, not duplicated
    rules = s3_server.minio().get_bucket_lifecycle(bucket).rules
    assert len(rules) == 1
    assert rules[0].rule_filter.prefix == "raw/" and rules[0].expiration.days == 3
    plain = s3_server.new_bucket()
    s3_server.open(plain)
    assert s3_server.minio().get_bucket_lifecycle(plain) is None


def test_s3_wrong_credentials_give_a_clear_error(s3_server):
    st = open_storage(s3_server.url(), Credentials(s3_server.access_key, "wrong-secret"),
                      role="buffer")
    with pytest.raises(StorageError) as caught:
        st.ensure_ready()
    assert type(caught.value) is StorageError
    assert "buffer S3 server refused the credentials" in str(caught.value)
    assert "CROWDSKY_BUFFER_PASSWORD" in str(caught.value)


# --- WebDAV only -------------------------------------------------------------------------------

def test_webdav_wrong_credentials_give_a_clear_error(webdav_server):
    st = open_storage(webdav_server.url(), Credentials(webdav_server.user, "wrong"),
                      role="archive")
    for call in (st.ensure_ready, lambda: st.put("a/b", io.BytesIO(b"x")), lambda: st.size("a")):
        with pytest.raises(StorageError) as caught:
            call()
        assert type(caught.value) is StorageError
        assert "archive WebDAV server refused the credentials (401)" in str(caught.value)


class StandInDAV:
    """A tiny WSGI server answering fixed statuses per method and recording what it was sent,
    for what wsgidav cannot do (a full quota, a read-only share) or cannot show (headers)."""

    def __init__(self, answers: dict[str, str]):
        from cheroot import wsgi
        self.answers, self.requests = answers, []
        self.server = wsgi.Server(("127.0.0.1", 0), self.app)
        self.server.prepare()
        threading.Thread(target=self.server.serve, daemon=True).start()
        self.url = f"webdav+http://127.0.0.1:{self.server.bind_addr[1]}/share"

    def app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.requests.append((environ["REQUEST_METHOD"], environ["PATH_INFO"],
                              environ.get("CONTENT_LENGTH"),
                              environ.get("HTTP_TRANSFER_ENCODING"), len(body)))
        start_response(self.answers.get(environ["REQUEST_METHOD"], "201 Created"), [])
        return [b""]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.stop()


def test_webdav_quota_and_permission_errors_are_named():
    with StandInDAV({"PROPFIND": "403 Forbidden", "PUT": "507 Insufficient Storage"}) as dav:
        st = open_storage(dav.url, role="archive")
        with pytest.raises(StorageError, match=r"out of space or over its quota \(507\)"):
            st.put("stacks/a/1/stack.fits", io.BytesIO(b"x" * 100), length=100)
        with pytest.raises(StorageError, match=r"forbids PROPFIND .*\(403\)"):
            st.exists("stacks/a/1/stack.fits")


def test_webdav_sends_content_length_whenever_it_is_known(tmp_path):
    """Nextcloud behind PHP-FPM stores chunked uploads as empty files: avoid chunking."""
    (tmp_path / "stack.fits").write_bytes(b"s" * 5000)
    with StandInDAV({}) as dav:
        st = open_storage(dav.url, role="archive")
        with open(tmp_path / "stack.fits", "rb") as f:      # a file: its size is the length
            f.read(1000)
            assert st.put("stacks/a/1/stack.fits", f) == 4000
        st.put("stacks/a/1/preview.png", io.BytesIO(b"p" * 300), length=300)
        st.put("stacks/a/1/streamed", GeneratedStream(b"g", total=700))   # unknown: chunked
        puts = [r[2:] for r in dav.requests if r[0] == "PUT"]
        assert puts == [("4000", None, 4000), ("300", None, 300), (None, "chunked", 700)]
        mkcols = [r[1] for r in dav.requests if r[0] == "MKCOL"]
        assert mkcols == ["/share/stacks/", "/share/stacks/a/", "/share/stacks/a/1/"]   # once each


# --- servers that are not there ----------------------------------------------------------------

@pytest.mark.parametrize("url", ["s3://bkt?endpoint=http://127.0.0.1:{port}",
                                 "webdav+http://127.0.0.1:{port}/share"])
def test_closed_port_means_storage_unavailable(url):
    st = open_storage(url.format(port=free_port()), Credentials("u", "p"))
    started = time.monotonic()
    for call in (st.ensure_ready, lambda: st.exists("a/b"), lambda: st.iter_bytes("a/b"),
                 lambda: st.put("a/b", GeneratedStream(b"x", total=100))):
        with pytest.raises(StorageUnavailable, match="unreachable"):
            call()
    assert time.monotonic() - started < 30   # retries back off, but give up


@pytest.mark.parametrize("kind", ["s3", "webdav"])
def test_server_stop_and_restart_mid_test(request, kind):
    server = request.getfixturevalue(f"{kind}_server")
    st = server.open()
    st.put("k/v", io.BytesIO(b"kept"))
    with server.stopped():
        with pytest.raises(StorageUnavailable):
            st.size("k/v")
    assert stored(st, "k/v") == b"kept"      # same port, same data, same Storage object


@pytest.mark.parametrize("kind", ["s3", "webdav"])
def test_server_dying_during_an_upload_means_storage_unavailable(request, kind):
    server = request.getfixturevalue(f"{kind}_server")
    st = server.open()

    class KillsTheServer(GeneratedStream):
        def read(self, n=-1):
            if self.pos >= 12 * 1024 * 1024 and server.running:
                server.kill()
            return super().read(n)

    try:
        with pytest.raises(StorageUnavailable):
            st.put("raw/1/1/big.fits", KillsTheServer(os.urandom(4096), total=40 * 1024 * 1024))
    finally:
        server.start()
    assert not st.exists("raw/1/1/big.fits") and list(st.list()) == []


# --- memory ------------------------------------------------------------------------------------

MEMORY_PROBE = textwrap.dedent("""
    import io, json, sys
    from lib.config import Credentials
    from lib.storage import open_storage

    def peak_rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    class Zeros:                       # 200 MB from a generator, 64 KiB per read like a socket
        def __init__(self, total): self.left = total
        def read(self, n=-1):
            n = min(65536, self.left, n if n and n > 0 else 65536)
            self.left -= n
            return BLOCK[:n]

    BLOCK = bytes(range(256)) * 256
    url, user, secret, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    st = open_storage(url, Credentials(user, secret))
    st.ensure_ready()
    st.put("warm/up", io.BytesIO(b"x" * 1000))
    before = peak_rss_mb()
    written = st.put("big/stream", Zeros(total))
    print(json.dumps({"before": before, "after": peak_rss_mb(), "written": written,
                      "size": st.size("big/stream")}))
""")


def test_s3_upload_of_200_mb_stream_keeps_memory_small(s3_server):
    total = 200 * 1024 * 1024
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, s3_server.url(), s3_server.access_key,
         s3_server.secret_key, str(total)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["written"] == probe["size"] == total
    assert probe["after"] - probe["before"] < 100, probe   # MB of peak RSS growth
