"""Prometheus metrics. Upload counters live in the app process; queue figures are read from the
database at scrape time, so they are right whatever number of stackers and app processes run."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from lib import queue
from lib.db import now

registry = CollectorRegistry()
uploads = Counter("crowdsky_uploads", "Frames received, by result", ["result"], registry=registry)
upload_bytes = Counter("crowdsky_upload_bytes", "Bytes of frames stored in the buffer", registry=registry)

DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 3600)


class QueueCollector:
    """Queue depth by state, stacker heartbeats and job durations, from the jobs table."""

    def __init__(self, db):
        self.db = db

    def collect(self):
        depth = GaugeMetricFamily("crowdsky_jobs", "Jobs by state", labels=["status"])
        for status, count in queue.counts_by_status(self.db).items():
            depth.add_metric([status], count)
        yield depth

        t = now()
        running = list(self.db.query(
            "SELECT lease_expires, started_at FROM jobs WHERE status = 'running'"))
        lease = GaugeMetricFamily("crowdsky_running_lease_seconds_left",
                                  "Shortest time left on a running job's lease (negative: expired)")
        lease.add_metric([], min((r["lease_expires"] - t for r in running), default=0.0))
        yield lease

        finished = [r["finished_at"] - r["started_at"] for r in self.db.query(
            "SELECT started_at, finished_at FROM jobs WHERE status = 'done' AND finished_at > :since",
            since=t - 86400) if r["started_at"]]
        buckets, total = [], 0
        for bound in DURATION_BUCKETS:
            buckets.append((str(bound), sum(1 for d in finished if d <= bound)))
        buckets.append(("+Inf", len(finished)))
        total = sum(finished)
        yield HistogramMetricFamily("crowdsky_job_duration_seconds",
                                    "Claim-to-done time of jobs finished in the last 24 h",
                                    buckets=buckets, sum_value=total)


def watch_queue(db) -> None:
    registry.register(QueueCollector(db))


def exposition() -> bytes:
    return generate_latest(registry)
