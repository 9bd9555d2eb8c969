"""gunicorn settings for the Shopfluence API (override any of them with GUNICORN_CMD_ARGS).

Workers vs threads: a look is CPU/GPU-bound model inference, serialised inside a worker, so
parallel looks need processes. CPU host: one worker per 2 cores (torch already uses 2 threads
per forward), 4 threads each so uploads, JSON and static files overlap inference. GPU host:
set SHOPFLUENCE_WORKERS=1 or 2 (each worker holds its own models in GPU memory) and more
threads. No ``preload_app``: torch/OpenMP thread pools and FAISS are not fork-safe once used,
so each worker loads its own models after the fork (the index is memory-mapped, so the workers
share its pages). ``timeout`` is a hard backstop above the app's own per-request timeout
(``api.request_timeout_s``, answered as 504) and the model load time.
"""

import multiprocessing
import os
import tempfile

bind = os.environ.get("SHOPFLUENCE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SHOPFLUENCE_WORKERS", str(max(1, multiprocessing.cpu_count() // 2))))
threads = int(os.environ.get("SHOPFLUENCE_THREADS", "4"))
worker_class = "gthread"
timeout = 120
graceful_timeout = 30
keepalive = 5
limit_request_line = 8190
limit_request_fields = 100
max_requests = 2000  # recycle workers now and then (fragmentation), with jitter so not all at once
max_requests_jitter = 200
accesslog = "-"
errorlog = "-"


def on_starting(server):
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="shopfluence-metrics-")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
