"""Train our re-identification model from scratch (``shopfluence train``).

Recipe: every catalog photo is its own identity. Each batch holds two independent
re-photographs (``TrainRephoto``) of each of ``batch_size`` photos. Losses:
ArcFace over the identities (proxies), cross-entropy over the 10 product classes, and an
in-batch InfoNCE between the two views. The InfoNCE term is our addition to the ArcFace +
classification seed recipe: with one photo per identity each ArcFace proxy moves only twice an
epoch, while InfoNCE gives every step a signal from every pair, which is what makes a short
CPU/GPU budget enough.

The run directory holds ``config.json`` (defaults merged with overrides), ``last.pt`` (resume
point, written atomically each epoch), ``log.jsonl``, ``training.png`` and ``release.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from detectors.preprocess import IMAGENET_MEAN, IMAGENET_STD
from detectors.reid import CLASSES, build_reid, save_release
from pipeline.augment import TrainRephoto
from pipeline.dataset import DEFAULT_DATA, clothing_split, load_small

_MEAN = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)


@dataclass
class TrainConfig:
    data: str = str(DEFAULT_DATA / "clothing-dataset-small")
    out: str = "runs/reid"
    backbone: str = "resnet10t"
    embed_dim: int = 256
    image_size: int = 112
    longer_side: int = 160  # photos are decoded once at this size and kept in memory
    epochs: int = 16
    batch_size: int = 64  # identities per step; each brings two views
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    arc_scale: float = 30.0
    arc_margin: float = 0.25
    w_class: float = 1.0
    w_nce: float = 0.5
    nce_temperature: float = 0.1
    seed: int = 0
    device: str = "auto"
    workers: int = 1  # data-loading processes; -1: all cores but two
    val_every: int = 1  # validate every N epochs (and always after the last)
    grad_clip: float = 10.0  # max gradient norm; steps with a non-finite loss are skipped
    init: str = ""  # a release file to start from (its embeddings seed the ArcFace proxies)
    max_minutes: float = 0.0  # >0: after epoch 2, cut the schedule to the epochs that fit in this wall time
    subset: int = 0  # >0: train on the first N photos only (tests, smoke runs)
    max_steps: int = 0  # >0: stop after this many steps in total (tests)

    @classmethod
    def load(cls, path: str | None = None, **overrides) -> TrainConfig:
        """Defaults, merged with a TOML file, merged with keyword overrides (None ignored)."""
        values = {}
        if path:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return cls(**values)


class ArcFace(nn.Module):
    """Additive angular margin loss (Deng et al. 2019) over L2-normalised embeddings."""

    def __init__(self, dim: int, classes: int, scale: float, margin: float):
        super().__init__()
        # unit-norm proxies: tiny ones get huge effective steps through the normalisation
        self.weight = nn.Parameter(F.normalize(torch.randn(classes, dim), dim=1))
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cos = emb @ F.normalize(self.weight, dim=1).T
        cos_t = cos.gather(1, target[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
        theta = torch.acos(cos_t)
        # past pi - m the margin would make the target easier; fall back to a linear penalty
        with_margin = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                                  cos_t - self.margin * math.sin(self.margin))
        logits = cos.scatter(1, target[:, None], with_margin) * self.scale
        return F.cross_entropy(logits, target)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = z1 @ z2.T / temperature
    target = torch.arange(len(z1), device=z1.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def compute_loss(model, arcface, batch, cfg: TrainConfig, device):
    """Total loss of one batch (two views per identity) and its parts.

    Returns (loss, arcface, class, nce, class logits, class targets).
    """
    v1, v2_, ident, cls = batch
    x = torch.cat([v1, v2_]).to(device, non_blocking=True)  # uint8: a quarter of the bytes to move
    x = (x.float() / 255 - _MEAN.to(device)) / _STD.to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    ident, cls = ident.to(device).repeat(2), cls.to(device).repeat(2)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        emb, logits = model(x)
    emb, logits = emb.float(), logits.float()
    l_arc = arcface(emb, ident)
    l_cls = F.cross_entropy(logits, cls, label_smoothing=0.1)
    l_nce = info_nce(emb[:len(v1)], emb[len(v1):], cfg.nce_temperature)
    return l_arc + cfg.w_class * l_cls + cfg.w_nce * l_nce, l_arc, l_cls, l_nce, logits, cls


class TwoViews(torch.utils.data.Dataset):
    def __init__(self, images: list[torch.Tensor], classes: list[int], size: int, seed: int):
        self.images, self.classes, self.seed = images, classes, seed
        self.epoch = 0
        self.aug = TrainRephoto(size, backgrounds=self._background)

    def _background(self) -> torch.Tensor:
        return self.images[random.randrange(len(self.images))].float() / 255

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
        random.seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))  # v2 transforms
        # uint8 views (normalised on the training device): 4x less shared memory and copying
        views = [(self.aug(self.images[i], g).clamp(0, 1) * 255).round().to(torch.uint8) for _ in range(2)]
        return views[0], views[1], i, self.classes[i]


class Schedule:
    """Learning-rate factor per step: linear warm-up, then cosine to zero at ``epochs``.

    ``epochs`` may be cut while training (``--max-minutes``); the cosine then ends earlier.
    """

    def __init__(self, epochs: int, steps_per_epoch: int, warmup_epochs: float):
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.warm = max(1, int(warmup_epochs * steps_per_epoch))

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        total = max(self.warm + 1, self.epochs * self.steps_per_epoch)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warm) / (total - self.warm))))

    def fit(self, seconds_left: float, done: int, epoch_s: float, val_s_per_epoch: float) -> int:
        """How many epochs in all fit in ``seconds_left`` more, keeping 5% and a final validation spare."""
        per_epoch = epoch_s + val_s_per_epoch
        more = int((0.95 * seconds_left - 3 * per_epoch) // per_epoch)
        return max(done + 1, min(self.epochs, done + more))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the path of the fp16 release file."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)

    photos = clothing_split("train", cfg.data)
    if cfg.subset:
        photos = photos[:: max(1, len(photos) // cfg.subset)][: cfg.subset]
    images = load_small(photos, cfg.longer_side, desc="decode train photos")
    classes = [CLASSES.index(p.label) for p in photos]
    val_photos = [] if cfg.subset else clothing_split("validation", cfg.data)  # decoded once, not per epoch
    val_images = load_small(val_photos, cfg.longer_side, desc="decode validation")
    data = TwoViews(images, classes, cfg.image_size, cfg.seed)
    arch = {"backbone": cfg.backbone, "embed_dim": cfg.embed_dim, "num_classes": len(CLASSES),
            "image_size": cfg.image_size}
    model, model_cfg = build_reid(**arch)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    arcface = ArcFace(cfg.embed_dim, len(images), cfg.arc_scale, cfg.arc_margin).to(device)
    if cfg.init:
        model.load_state_dict(build_reid(checkpoint=cfg.init)[0].state_dict())
        arcface.weight.data = _proxies(model, images, cfg.image_size, device)
    params = [{"params": [p for n, p in model.named_parameters() if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in model.named_parameters() if p.ndim <= 1], "weight_decay": 0.0},
              {"params": arcface.parameters(), "weight_decay": 0.0}]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True)
    workers = cfg.workers if cfg.workers >= 0 else max(1, (os.cpu_count() or 2) - 2)
    loader_kw = dict(batch_size=cfg.batch_size, shuffle=True, drop_last=len(images) > cfg.batch_size,
                     num_workers=workers, persistent_workers=False, pin_memory=device.type == "cuda",
                     generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    schedule = Schedule(cfg.epochs, steps_per_epoch, cfg.warmup_epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    start_epoch, step = 0, 0
    ckpt_path = out / "last.pt"
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if _run_identity(ck["config"]) != _run_identity(dataclasses.asdict(cfg)):
            raise SystemExit(f"{ckpt_path} was written with another config; use a new --out or delete it")
        model.load_state_dict(ck["model"])
        arcface.load_state_dict(ck["arcface"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start_epoch, step = ck["epoch"] + 1, ck["step"]
        schedule.epochs = min(cfg.epochs, ck.get("epochs", cfg.epochs)) if cfg.max_minutes else cfg.epochs
        loader_kw["generator"].set_state(ck["loader_rng"])
        print(f"resuming from {ckpt_path}: epoch {start_epoch}, step {step}")

    started = time.time()
    epoch_seconds, val_seconds = [], 0.0
    epoch = start_epoch
    while epoch < schedule.epochs:
        if cfg.max_steps and step >= cfg.max_steps:
            break
        data.epoch = epoch
        loader = torch.utils.data.DataLoader(data, **loader_kw)
        model.train()
        sums = {"loss": 0.0, "arcface": 0.0, "class": 0.0, "nce": 0.0, "class_acc": 0.0, "grad_norm": 0.0}
        n, skipped = 0, 0
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{schedule.epochs}", unit="step", disable=None)
        for batch in bar:
            loss, l_arc, l_cls, l_nce, logits, cls = compute_loss(model, arcface, batch, cfg, device)
            opt.zero_grad(set_to_none=True)
            grad_norm = torch.tensor(float("nan"))
            if torch.isfinite(loss):
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_([q for g in params for q in g["params"]], cfg.grad_clip)
            if torch.isfinite(grad_norm):
                opt.step()
                for k, v in (("loss", loss), ("arcface", l_arc), ("class", l_cls), ("nce", l_nce), ("grad_norm", grad_norm)):
                    sums[k] += float(v.detach())
                sums["class_acc"] += float((logits.argmax(1) == cls).float().mean())
                n += 1
                bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", acc=f"{sums['class_acc'] / n:.2f}")
            else:  # a non-finite loss or gradient: drop this step
                skipped += 1
            sched.step()
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        record = {"epoch": epoch + 1, "step": step, "lr": sched.get_last_lr()[0],
                  "seconds": round(time.time() - t0, 1), **{k: v / max(n, 1) for k, v in sums.items()},
                  **({"skipped_steps": skipped} if skipped else {})}
        epoch_seconds.append(time.time() - t0)
        last = epoch + 1 == schedule.epochs
        if not cfg.subset and (last or epoch == 0 or (epoch + 1) % max(1, cfg.val_every) == 0):
            t_val = time.time()
            record.update(validate(model, cfg, device, val_photos, val_images))
            val_seconds = time.time() - t_val
            record["val_seconds"] = round(val_seconds, 1)
            # a usable model after every validation, should the process be stopped before the end
            save_release(model, {**model_cfg, "trained": {**dataclasses.asdict(cfg), "epochs": epoch + 1}},
                         out / "release.pt")
        if cfg.max_minutes and epoch - start_epoch == 1 and not last:
            # the second epoch of this process is the first without start-up costs
            fit = schedule.fit(cfg.max_minutes * 60 - (time.time() - started), epoch + 1, epoch_seconds[-1],
                               val_seconds / max(1, cfg.val_every))
            if fit < schedule.epochs:
                print(f"--max-minutes {cfg.max_minutes}: {schedule.epochs} epochs do not fit, "
                      f"training {fit} (reproduce with --epochs {fit})")
                schedule.epochs = fit
                record["epochs_planned"] = fit
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record))
        _atomic_save({"model": model.state_dict(), "arcface": arcface.state_dict(), "opt": opt.state_dict(),
                      "sched": sched.state_dict(), "epoch": epoch, "step": step,
                      "loader_rng": loader_kw["generator"].get_state(), "epochs": schedule.epochs,
                      "config": dataclasses.asdict(cfg)}, ckpt_path)
        epoch += 1
    model.cpu().eval()
    release = out / "release.pt"
    save_release(model, {**model_cfg, "trained": {**dataclasses.asdict(cfg), "epochs": schedule.epochs}}, release)
    plot_log(out / "log.jsonl", out / "training.png")
    return release


def validate(model, cfg: TrainConfig, device, photos, images) -> dict:
    """Recall@1 of held-out-style re-photographs of the validation split, and class accuracy."""
    from pipeline.evaluate import EvalRephoto, embed_tensors, recall_at_k  # noqa: PLC0415 (cycle)

    model.eval()
    bgs = [im.float() / 255 for im in images[::7]]
    aug = EvalRephoto(cfg.image_size, bgs)
    g = torch.Generator().manual_seed(1234)
    query_t = [(aug(im, g) - _MEAN) / _STD for im in images]
    gal, logits = embed_tensors(model, _gallery_views(images, cfg.image_size), device)
    qry, _ = embed_tensors(model, query_t, device)
    ranks = np.argsort(-(qry @ gal.T), axis=1)
    truth = np.arange(len(images))
    acc = float((logits.argmax(1) == np.array([CLASSES.index(p.label) for p in photos])).mean())
    model.train()
    return {"val_recall@1": recall_at_k(ranks, truth, 1), "val_class_acc": acc}


def _proxies(model, images, size: int, device) -> torch.Tensor:
    """ArcFace proxies for a run that starts from trained weights: each photo's own embedding."""
    from pipeline.evaluate import embed_tensors  # noqa: PLC0415 (cycle)

    emb, _ = embed_tensors(model.eval(), _gallery_views(images, size), device)
    model.train()
    return torch.from_numpy(emb).to(device)


def _gallery_views(images: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Catalog-side inputs: each photo letterboxed whole to ``size``, normalised."""
    from detectors.preprocess import letterbox  # noqa: PLC0415

    return [(letterbox(im.float() / 255, size, _MEAN) - _MEAN) / _STD for im in images]


def _run_identity(cfg: dict) -> dict:
    """The options that must match to resume (how long or where a run goes may change).

    ``epochs`` may grow: a finished run is extended, its cosine schedule recomputed over the
    new length from the step it reached (a warm restart).
    """
    ignore = ("epochs", "out", "max_steps", "workers", "device", "val_every", "max_minutes", "data")
    return {k: v for k, v in {**dataclasses.asdict(TrainConfig()), **cfg}.items() if k not in ignore}


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plot_log(log: Path, png: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k in ("loss", "arcface", "class", "nce"):
        a.plot(ep, [r[k] for r in rows], label=k)
    a.set_xlabel("epoch"), a.set_title("training losses"), a.legend()
    for k in ("class_acc", "val_class_acc", "val_recall@1"):
        pts = [(r["epoch"], r[k]) for r in rows if k in r]
        if pts:
            b.plot(*zip(*pts), label=k, marker="." if k.startswith("val") else None)
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.set_title("accuracy / recall"), b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
