"""Batch ingestion of a catalog: load photos, run the catalog stages, index, tag; resumable.

``shopfluence catalog ingest CATALOG`` reads the rows (:mod:`pipeline.rows`), rejects the bad
ones up front (missing fields, duplicate ids), and cuts the rest, in file order, into chunks of
``chunk_size`` products. A worker turns a chunk into one file under ``<work>/chunks/``: decode
the photos in a thread pool (local paths, or URLs with a timeout, retries and a size cap), find
each product's garment, embed every crop of the chunk in one batched call (fp16 on a GPU),
average each product's photos, and write ids, vectors, records, tags and rejects atomically.
A chunk file is the checkpoint: after ``kill -9`` the next run skips the chunks on disk and does
the rest, so no product is indexed twice or lost. When all chunks are done they are merged into
the index set under the same lock the API's writers take (an empty category is trained for its
size and encoded in parallel shards, a non-empty one grows by ``add``), saved atomically, and
the reports are written: ``tags.jsonl`` (per product: category, label, box, scores),
``rejects.jsonl`` (line, product_id, reason) and ``near_duplicates.jsonl`` (photos of different
products whose perceptual hashes are within ``dup_distance`` bits).

Engines run the same :class:`ChunkWorker`: ``local`` (in this process, or ``workers``
processes) and ``ray`` (Ray Data ``map_batches`` over an actor pool, one GPU per actor when the
cluster has GPUs; a local Ray is started unless ``ray_address`` names a cluster, whose nodes
must have this package, the weights and the photos, and share the work folder).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.images import ImageError, load_image
from pipeline.rows import file_digest, plan, read_catalog, reject
from pipeline.types import CATEGORIES


@dataclass
class IngestOptions:
    """How a catalog is ingested (every field has a CLI flag of the same name)."""

    engine: str = "local"  # local | ray
    workers: int = 1  # processes (local) or actors (ray)
    chunk_size: int = 64  # products a chunk: the unit of batching, of checkpoint and of work
    threads: int = 4  # photo-decoding threads a worker
    max_side: int = 512  # photos are decoded at most this large (JPEG draft mode)
    url_timeout: float = 10.0
    url_retries: int = 2
    max_image_mb: float = 20.0
    dup_distance: int = 4  # perceptual-hash bits under which two photos are near-duplicates (< 8)
    ray_address: str | None = None
    restart: bool = False  # forget finished chunks of this catalog and process every row again
    new_index: bool = False  # replace the index instead of adding to it


@dataclass
class IngestReport:
    index: str
    work: str
    rows: int = 0
    products: int = 0  # rows that went to the workers
    indexed: dict = field(default_factory=dict)  # per category
    rejected: int = 0  # rows not indexed
    rejected_images: int = 0  # photos skipped in products that were indexed
    not_hot: int = 0
    near_duplicate_groups: int = 0
    chunks: int = 0
    chunks_resumed: int = 0
    seconds: float = 0.0
    already_done: bool = False
    timings_s: dict = field(default_factory=dict)  # of the merge: read chunks, index, near-duplicates, reports
    rejects: list = field(default_factory=list, repr=False)

    @property
    def added(self) -> dict:
        return self.indexed

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(photo or product id, reason) of every reject."""
        return [(r.get("image") or r.get("product_id") or f"line {r['line']}", r["reason"]) for r in self.rejects]

    def summary(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "rejects"}


# ---- photos ---------------------------------------------------------------------------
def fetch_url(url: str, *, timeout: float, retries: int, max_bytes: int) -> bytes:
    """GET a photo: ``retries`` more tries (1 s, 2 s ... apart) on timeouts, resets and 5xx/429."""
    last = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2 ** (attempt - 1), 8))
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "shopfluence-ingest/0.1"})
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (http(s) only, checked in rows)
                size = r.headers.get("Content-Length")
                if size and size.isdigit() and int(size) > max_bytes:
                    raise ImageError(f"{url} is {int(size) / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB cap",
                                     "too_large")
                data = r.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise ImageError(f"{url} is over the {max_bytes / 1e6:.0f} MB cap", "too_large")
                return data
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
            if e.code < 500 and e.code != 429:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = e
    reason = last if isinstance(last, str) else getattr(last, "reason", None) or last
    raise ImageError(f"cannot download {url}: {reason} (after {attempt + 1} tries)", "unreadable")


def load_photo(ref: str, opts: IngestOptions) -> np.ndarray:
    """A local path or http(s) URL (as made by :func:`pipeline.rows.image_refs`) to RGB uint8."""
    if ref.startswith(("http://", "https://")):
        data = fetch_url(ref, timeout=opts.url_timeout, retries=opts.url_retries,
                         max_bytes=int(opts.max_image_mb * 1e6))
        return load_image(data, max_side=opts.max_side)
    return load_image(ref, max_side=opts.max_side)


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash: the sign of horizontal gradients of a 9x8 grey thumbnail."""
    g = np.asarray(Image.fromarray(image).convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    bits = (g[:, 1:] > g[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicates(hashes: list[tuple[str, str, int]], max_distance: int = 4) -> list[dict]:
    """Groups of photos of *different* products whose hashes differ in at most ``max_distance`` bits.

    ``hashes`` is (product_id, photo, hash). Equal hashes are merged first (a stock photo reused
    by 100 size variants is one value, not 5,000 pairs); the distinct values are then compared
    exactly for ``max_distance`` < 8: the 64 bits are cut into ``max_distance + 1`` bands, two
    close hashes agree on one band at least (pigeonhole), so only values sharing a band value
    are compared. Photos linked through close hashes form one group; a group is reported when
    it holds two products or more.
    """
    if len(hashes) < 2:
        return []
    values, inverse = np.unique(np.array([x[2] for x in hashes], np.uint64), return_inverse=True)
    parent = np.arange(len(values))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = (values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
            if len(group) < 2:
                continue
            x = values[group]
            close = np.triu(_popcount(x[:, None] ^ x[None, :]) <= max_distance, 1)
            for a, b in zip(*np.nonzero(close)):
                ra, rb = find(int(group[a])), find(int(group[b]))
                if ra != rb:
                    parent[ra] = rb
    roots = parent
    while not np.array_equal(roots[roots], roots):  # pointer jumping: every value to its root
        roots = roots[roots]
    roots = roots[inverse]
    order = np.argsort(roots, kind="stable")
    cuts = np.flatnonzero(np.diff(roots[order])) + 1
    starts, ends = np.r_[0, cuts], np.r_[cuts, len(order)]
    out = []
    for g in np.flatnonzero(ends - starts >= 2):
        members = order[starts[g]:ends[g]]
        products = sorted({hashes[i][0] for i in members})
        if len(products) < 2:
            continue
        x = np.unique(values[inverse[members]])
        out.append({"products": products, "photos": [hashes[i][1] for i in members],
                    "max_distance": int(_popcount(x[:, None] ^ x[None, :]).max())})
    return sorted(out, key=lambda g: g["products"])


_POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (four 16-bit table lookups)."""
    return _POP16[np.ascontiguousarray(x).view(np.uint16).reshape(*x.shape, 4)].sum(-1, dtype=np.int64)


# ---- the worker -----------------------------------------------------------------------
def process_chunk(models: dict, products: list[dict], opts: IngestOptions) -> dict:
    """The catalog stages for one chunk of planned products (see :func:`pipeline.rows.plan`).

    Returns ids, vectors (n, d) float32, rerank (n, d') float16 or None, and per product its store
    record and tag line, plus rejects and (product_id, photo, dhash) of every decoded photo.
    """
    from pipeline.catalog import products_vectors  # noqa: PLC0415 (catalog imports the models stack)

    jobs = [(i, ref) for i, p in enumerate(products) for ref in p["images"]]

    def load(job):
        try:
            return load_photo(job[1], opts)
        except ImageError as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(max(1, opts.threads)) as pool:
        loaded = list(pool.map(load, jobs))
    photos = [[] for _ in products]  # (ref, image)
    errors = [[] for _ in products]
    hashes = []
    for (i, ref), got in zip(jobs, loaded):
        if isinstance(got, ImageError):
            errors[i].append((ref, str(got)))
        else:
            photos[i].append((ref, got))
            hashes.append((products[i]["record"]["product_id"], ref, dhash(got)))
    rejects, ok = [], []
    for i, p in enumerate(products):
        pid = p["record"]["product_id"]
        if not photos[i]:
            rejects.append(reject(p["line"], pid, "no usable image: " + "; ".join(f"{r}: {e}" for r, e in errors[i])))
        else:
            ok.append(i)
            rejects += [reject(p["line"], pid, f"photo skipped, product indexed without it: {e}", image=r)
                        for r, e in errors[i]]
    results = products_vectors(models, [[im for _, im in photos[i]] for i in ok], [products[i]["category"] for i in ok])
    ids, vectors, rerank, records, tags = [], [], [], [], []
    for i, pv in zip(ok, results):
        p, refs = products[i], [r for r, _ in photos[i]]
        pid = p["record"]["product_id"]
        if isinstance(pv, ValueError):
            rejects.append(reject(p["line"], pid, f"{pv}"))
            continue
        label = p["record"].get("label") or pv.label
        ids.append(pid)
        vectors.append(pv.vector)
        if pv.rerank is not None:
            rerank.append(pv.rerank)
        records.append({**p["record"], "category": pv.category, "label": label, "image": refs[0], "images": refs})
        tags.append({"product_id": pid, "line": p["line"], "category": pv.category, "label": label,
                     "category_given": p["category"] is not None,
                     "photos": [{"image": refs[t["photo"]], **{k: v for k, v in t.items() if k != "photo"}}
                                for t in pv.tags]})
    dim = models["embedder"].dim
    return {"ids": ids, "vectors": np.array(vectors, np.float32).reshape(-1, dim),
            # float16 as the index stores it (a reid-local row is 49 x 256 values)
            "rerank": np.array(rerank, np.float16) if rerank else None, "records": records, "tags": tags,
            "rejects": sorted(rejects, key=lambda r: r["line"]), "hashes": hashes}


class ChunkWorker:
    """Loads the models once, then turns chunks into chunk files. The local engine calls
    :meth:`run`; Ray Data calls it as a ``map_batches`` callable class (one chunk a batch)."""

    def __init__(self, config: dict, work: str, opts: dict, threads: int = 0):
        import torch  # noqa: PLC0415

        from pipeline.look import build_models, model_signature  # noqa: PLC0415

        if threads:
            torch.set_num_threads(threads)
        self.models = build_models(config)
        self.signature = model_signature(self.models["embedder"], self.models["reranker"])
        self.work, self.opts = Path(work), IngestOptions(**opts)

    def run(self, k: int, products: list[dict]) -> dict:
        result = process_chunk(self.models, products, self.opts)
        write_chunk(self.work, k, result, self.signature)
        return {"chunk": k, "products": len(products), "indexed": len(result["ids"]),
                "rejected": sum("image" not in r for r in result["rejects"])}

    def __call__(self, batch: dict) -> dict:
        done = [self.run(int(k), json.loads(rows)) for k, rows in zip(batch["chunk"], batch["rows"])]
        return {name: np.array([d[name] for d in done]) for name in ("chunk", "products", "indexed", "rejected")}


# ---- chunk files ----------------------------------------------------------------------
def chunk_path(work: Path, k: int) -> Path:
    return work / "chunks" / f"{k:06d}.npz"


def write_chunk(work: Path, k: int, result: dict, signature: dict) -> None:
    """Write to a temporary name, fsync, rename: a chunk file on disk is always complete."""
    path = chunk_path(work, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"signature": signature, "records": result["records"], "tags": result["tags"],
            "rejects": result["rejects"], "hashes": [[p, r, f"{h:016x}"] for p, r, h in result["hashes"]]}
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.array(result["ids"], dtype=str), vectors=result["vectors"],
                 rerank=np.zeros((len(result["ids"]), 0), np.float16) if result["rerank"] is None else result["rerank"],
                 meta=np.array(json.dumps(meta)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_chunk(work: Path, k: int) -> dict:
    with np.load(chunk_path(work, k)) as z:
        meta = json.loads(str(z["meta"]))
        rerank = z["rerank"]
        return {"ids": [str(x) for x in z["ids"]], "vectors": z["vectors"],
                "rerank": rerank if rerank.shape[1] else None, **meta,
                "hashes": [(p, r, int(h, 16)) for p, r, h in meta["hashes"]]}


# ---- engines --------------------------------------------------------------------------
_WORKER: ChunkWorker | None = None


def _init_process(config, work, opts, threads):
    global _WORKER  # noqa: PLW0603 (one worker object per pool process)
    _WORKER = ChunkWorker(config, work, opts, threads)


def _run_in_process(k, products):
    return _WORKER.run(k, products)


def run_local(chunks: dict[int, list[dict]], config: dict, work: Path, opts: IngestOptions, bar) -> None:
    threads = max(1, (os.cpu_count() or 1) // max(1, opts.workers))
    args = (config, str(work), dataclasses.asdict(opts), threads)
    if opts.workers <= 1:
        worker = ChunkWorker(*args)
        for k, products in chunks.items():
            _progress(bar, worker.run(k, products))
        return
    ctx = multiprocessing.get_context("spawn")  # torch and MediaPipe do not survive fork well
    with concurrent.futures.ProcessPoolExecutor(opts.workers, mp_context=ctx, initializer=_init_process,
                                                initargs=args) as pool:
        futures = [pool.submit(_run_in_process, k, p) for k, p in chunks.items()]
        for f in concurrent.futures.as_completed(futures):
            _progress(bar, f.result())


def run_ray(chunks: dict[int, list[dict]], config: dict, work: Path, opts: IngestOptions, bar) -> None:
    try:
        import ray  # noqa: PLC0415
        import ray.data  # noqa: PLC0415
    except ImportError as e:
        raise RuntimeError("the ray engine needs Ray: pip install -e '.[ray]'") from e
    started = not ray.is_initialized()
    if started:
        ray.init(address=opts.ray_address, num_cpus=None if opts.ray_address else max(1, opts.workers),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts products, with rate and ETA
        gpus = int(ray.cluster_resources().get("GPU", 0))
        size = min(opts.workers, gpus) if gpus else opts.workers
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        ds = ray.data.from_items([{"chunk": k, "rows": json.dumps(p)} for k, p in chunks.items()],
                                 override_num_blocks=max(1, len(chunks)))
        done = ds.map_batches(ChunkWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size),
                              fn_constructor_kwargs={"config": config, "work": str(work),
                                                     "opts": dataclasses.asdict(opts), "threads": 0},
                              **resources)
        for row in done.iter_rows():
            _progress(bar, row)
    finally:
        if started:
            ray.shutdown()


def _progress(bar, done: dict) -> None:
    bar.update(int(done["products"]))
    bar.rejected += int(done["rejected"])
    bar.set_postfix(rejected=bar.rejected, refresh=False)


# ---- the run --------------------------------------------------------------------------
def ingest(catalog: str | Path | None, index_dir: str | Path, config: dict, opts: IngestOptions | None = None, *,
           hot_column: str | None = None, hot_ids: set[str] | None = None, rows=None, work: str | Path | None = None,
           base: Path | None = None) -> IngestReport:
    """Ingest a catalog file (or ``rows`` already read) into the index set at ``index_dir``.

    The work folder (default ``<index_dir>.ingest``) holds the chunks and, at the end, the
    reports; run again with the same arguments to resume after a crash.
    """
    opts = opts or IngestOptions()
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    work = Path(work or f"{index_dir}.ingest")
    if rows is None:
        rows = read_catalog(catalog)
        base = Path(catalog).resolve().parent
        source = {"catalog": str(Path(catalog).resolve()), "sha256": file_digest(catalog)}
    else:
        source = {"catalog": None, "sha256": _digest_json([dataclasses.astuple(r) for r in rows])}
    products, rejects, cold = plan(rows, base, hot_column=hot_column, hot_ids=hot_ids)
    report = IngestReport(str(index_dir), str(work), rows=len(rows), products=len(products), not_hot=cold)
    chunks = {k: products[i:i + opts.chunk_size] for k, i in enumerate(range(0, len(products), opts.chunk_size))}
    report.chunks = len(chunks)
    state = {**source, "hot_column": hot_column, "hot_ids": sorted(hot_ids) if hot_ids is not None else None,
             "chunk_size": opts.chunk_size, "chunks": len(chunks),
             "models": _digest_json({k: config[k] for k in ("pose", "detector", "masks", "embedder", "reranker")})}
    previous = _read_json(work / "state.json")
    if previous and not opts.restart:
        same = {k: v for k, v in previous.items() if k not in ("finished", "started")} == state
        if same and previous.get("finished"):
            done = _read_json(work / "summary.json") or {}
            print(f"{catalog or 'this catalog'} was already ingested into {index_dir} ({previous['finished']}); "
                  "nothing to do (--restart processes every row again)", file=sys.stderr)
            return dataclasses.replace(report, **{k: v for k, v in done.items() if k in ("indexed", "rejected",
                                       "rejected_images", "near_duplicate_groups")}, already_done=True)
        if not same and not previous.get("finished"):
            raise RuntimeError(f"{work} holds an unfinished ingest of another catalog or other options "
                               f"({previous.get('catalog')}): run that again to finish it, or pass --restart")
        if not same:
            shutil.rmtree(work / "chunks", ignore_errors=True)
    else:
        shutil.rmtree(work / "chunks", ignore_errors=True)
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    for tmp in (work / "chunks").glob(".*.tmp"):  # a chunk a killed run was writing
        tmp.unlink()
    _write_json(work / "state.json", {**state, "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    pending = {k: p for k, p in chunks.items() if not chunk_path(work, k).is_file()}
    report.chunks_resumed = len(chunks) - len(pending)
    if report.chunks_resumed:
        print(f"resuming: {report.chunks_resumed} of {len(chunks)} chunks were done by an earlier run", file=sys.stderr)
    done_products = sum(len(chunks[k]) for k in chunks if k not in pending)
    with tqdm(total=len(products), initial=done_products, unit="product", desc="ingest", disable=None,
              smoothing=0.1) as bar:
        bar.rejected = 0
        if pending:
            (run_ray if opts.engine == "ray" else run_local)(pending, config, work, opts, bar)
    finish(work, index_dir, config, opts, report, rejects, len(chunks))
    report.seconds = round(time.perf_counter() - t0, 2)
    _write_json(work / "summary.json", report.summary())
    _write_json(work / "state.json", {**state, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return report


def finish(work: Path, index_dir: Path, config: dict, opts: IngestOptions, report: IngestReport,
           rejects: list[dict], n_chunks: int) -> None:
    """Merge every chunk into the index set (under the writers' lock) and write the reports."""
    from indexes.category import gpu_wanted  # noqa: PLC0415
    from indexes.index_set import IndexSet, write_lock  # noqa: PLC0415

    t = time.perf_counter()

    def lap(name):
        nonlocal t
        report.timings_s[name] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()

    parts = [read_chunk(work, k) for k in tqdm(range(n_chunks), desc="read chunks", disable=None, leave=False)]
    lap("read_chunks")
    signatures = {json.dumps(p["signature"], sort_keys=True) for p in parts}
    if len(signatures) > 1:
        raise RuntimeError(f"the chunks in {work} were made with different model weights: run again with --restart")
    tags = [t for p in parts for t in p["tags"]]
    rejects = sorted(rejects + [r for p in parts for r in p["rejects"]], key=lambda r: (r["line"] or 0))
    icfg = config["index"]
    if parts:
        signature = parts[0]["signature"]
        with write_lock(index_dir):
            if (index_dir / "manifest.json").is_file() and not opts.new_index:
                index = IndexSet.load(index_dir, signature)
            else:
                index = IndexSet(signature, factory=icfg["factory"], flat_limit=icfg["flat_limit"],
                                 nprobe=icfg["nprobe"], rescore=icfg["rescore"])
            categories = np.array([r["category"] for p in parts for r in p["records"]])
            records = np.array([r for p in parts for r in p["records"]], dtype=object)
            vectors = np.concatenate([p["vectors"] for p in parts])
            rr = [p["rerank"] for p in parts if p["rerank"] is not None]
            rerank = np.concatenate(rr) if rr else None
            for cat in CATEGORIES:
                sel = np.flatnonzero(categories == cat)
                report.indexed[cat] = len(sel)
                if len(sel):
                    index.bulk_add(cat, list(records[sel]), vectors[sel], None if rerank is None else rerank[sel],
                                   gpu=gpu_wanted(icfg), workers=opts.workers)
            index.maintain(growth=icfg["retrain_growth"], gpu=gpu_wanted(icfg))
            index.save(index_dir)
    else:
        report.indexed = dict.fromkeys(CATEGORIES, 0)
    lap("index")
    groups = near_duplicates([h for p in parts for h in p["hashes"]], opts.dup_distance)
    lap("near_duplicates")
    report.rejects = rejects
    report.rejected = sum("image" not in r for r in rejects)
    report.rejected_images = len(rejects) - report.rejected
    report.near_duplicate_groups = len(groups)
    _write_lines(work / "tags.jsonl", tags)
    _write_lines(work / "rejects.jsonl", rejects)
    _write_lines(work / "near_duplicates.jsonl", groups)
    lap("reports")


# ---- small file helpers ---------------------------------------------------------------
def _digest_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, value) -> None:
    _write_lines(path, [value], indent=2)


def _write_lines(path: Path, values: list, indent=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for v in values:
            f.write(json.dumps(v, indent=indent) + "\n")
    os.replace(tmp, path)
