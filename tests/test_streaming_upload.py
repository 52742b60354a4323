"""A 200 MB frame streams through the app into S3: the app's memory does not grow with file size."""
from __future__ import annotations

from tests.apps import Deployment
from tests.frames import seestar_header, small_frame_bytes

MB = 1024 * 1024


class Body:
    """A FITS header followed by *length* zero bytes, produced as it is read (never all in memory)."""

    def __init__(self, head: bytes, total: int):
        self.head, self.total, self.sent = head, total, 0

    def __len__(self) -> int:
        return self.total

    def read(self, size: int = -1) -> bytes:
        size = self.total - self.sent if size is None or size < 0 else min(size, self.total - self.sent)
        part = self.head[self.sent:self.sent + size]
        part += bytes(size - len(part))
        self.sent += size
        return part


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_200_mb_upload_streams_into_s3(tmp_path, s3_server):
    d = Deployment(tmp_path / "crowdsky", {
        "CROWDSKY_BUFFER_URL": s3_server.url(),
        "CROWDSKY_BUFFER_USER": s3_server.credentials.user,
        "CROWDSKY_BUFFER_PASSWORD": s3_server.credentials.secret,
        "CROWDSKY_MAX_FRAME_BYTES": str(300 * MB),
    })
    d.start_app()
    try:
        owner = d.user("bigsensor")
        session = owner.new_session()
        assert owner.put_frame(session, "warm-up.fit", small_frame_bytes(seed=2)).status_code == 201
        before = peak_rss_mb(d.app.pid)

        width = height = 10_240                                 # 200 MiB of 16-bit pixels
        head = seestar_header(NAXIS1=width, NAXIS2=height).tostring().encode("ascii")
        total = len(head) + width * height * 2
        response = owner.put_frame(session, "huge.fit", Body(head, total))
        assert response.status_code == 201, response.text
        assert response.json()["size"] == total

        growth = peak_rss_mb(d.app.pid) - before
        assert growth < 64, f"the app's peak memory grew by {growth:.0f} MB for a {total / MB:.0f} MB upload"
        bucket = d.env["CROWDSKY_BUFFER_URL"][len("s3://"):].split("?")[0]
        objects = [o for o in s3_server.minio().list_objects(bucket, recursive=True) if o.size == total]
        assert len(objects) == 1
    finally:
        d.stop_app()
