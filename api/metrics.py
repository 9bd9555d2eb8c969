"""Prometheus metrics. Under gunicorn (PROMETHEUS_MULTIPROC_DIR set by gunicorn.conf.py) each
worker writes its own files and ``/metrics`` adds them up; otherwise one process registry."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REQUESTS = Counter("shopfluence_requests_total", "HTTP requests", ["method", "endpoint", "status"])
LATENCY = Histogram("shopfluence_request_seconds", "HTTP request latency", ["endpoint"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
STAGE = Histogram("shopfluence_stage_seconds", "pipeline stage latency", ["stage"],
                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
INDEX_SIZE = Gauge("shopfluence_index_products", "products indexed per category", ["category"],
                   multiprocess_mode="max")


def observe_request(method: str, endpoint: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, endpoint, str(status)).inc()
    LATENCY.labels(endpoint).observe(seconds)


def observe_stages(timings_ms: dict) -> None:
    for stage, ms in timings_ms.items():
        STAGE.labels(stage).observe(ms / 1000)


def render(index_counts: dict | None) -> tuple[bytes, str]:
    for category, n in (index_counts or {}).items():
        INDEX_SIZE.labels(category).set(n)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
