"""Our own fashion re-identification network: a compact CNN, an embedding and a class head.

Trained from scratch by ``shopfluence train`` (see ``pipeline/train.py``). The released file
holds ``{"config": {...}, "state_dict": {... fp16}}`` so it loads without the training code.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

# The 10 product classes of clothing-dataset-small, and the category each belongs to.
CLASSES = ("dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt")
CLASS_CATEGORY = {
    "dress": "dress", "hat": None, "longsleeve": "upper", "outwear": "upper", "pants": "lower",
    "shirt": "upper", "shoes": "footwear", "shorts": "lower", "skirt": "lower", "t-shirt": "upper",
}

DEFAULT_ARCH = {"backbone": "resnet10t", "embed_dim": 256, "num_classes": len(CLASSES), "image_size": 112}


class GeM(nn.Module):
    """Generalised-mean pooling: a learnt exponent between average (1) and max (inf) pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32, p kept in [1, 6] and the mean kept above zero: a channel that is dead over
        # the whole map would otherwise give 0 ** (1/p), whose gradient is infinite (NaN in bf16 runs)
        p = self.p.clamp(1.0, 6.0)
        with torch.autocast(x.device.type, enabled=False):
            m = F.adaptive_avg_pool2d(x.float().clamp(min=self.eps).pow(p), 1)
            return m.clamp(min=1e-30).pow(1.0 / p).flatten(1).to(x.dtype)  # fp16 inference stays fp16


class ReidNet(nn.Module):
    """Backbone -> GeM -> linear + BN embedding (BNNeck) -> class logits.

    ``forward`` returns (embedding L2-normalised (n, d) float32, class logits (n, C)).
    """

    def __init__(self, *, backbone: str, embed_dim: int, num_classes: int, **_):
        super().__init__()
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        self.pool = GeM()
        self.neck = nn.Linear(self.backbone.num_features, embed_dim, bias=False)
        self.bn = nn.BatchNorm1d(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.head(self.backbone(x))
        return F.normalize(e.float(), dim=1), self.classifier(e)

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        """The embedding (before L2 normalisation) of a backbone feature map (n, C, h, w)."""
        return self.bn(self.neck(self.pool(fmap)))


def build_reid(*, checkpoint: str | Path | None = None, **arch) -> tuple[ReidNet, dict]:
    """Build the network; ``checkpoint=None`` means untrained (random init).

    Returns the model (eval mode) and its config (architecture, image size, classes).
    """
    config = {**DEFAULT_ARCH, "classes": list(CLASSES), **arch}
    state = None
    if checkpoint is not None:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
        config = {**config, **blob["config"]}
        state = blob["state_dict"]
    model = ReidNet(**config)
    if state is not None:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval(), config


def save_release(model: ReidNet, config: dict, path: str | Path) -> None:
    """Write the fp16 release file: config plus weights, no optimiser or ArcFace proxies."""
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.cpu()) for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    torch.save({"config": config, "state_dict": state}, tmp)
    tmp.replace(path)
