"""Garment masks, so background and skin do not pollute the embedding.

Backends (registry ``MASKERS``): ``sam`` (segment-anything, box prompts, all boxes of a photo
in one batched call) and ``person`` (the person mask of the pose stage inside each box; the
fallback when no SAM checkpoint is present; the whole box when there is no person).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.types import Garments, PoseVerdict


def _box_masks(garments: Garments, person_mask: np.ndarray | None) -> np.ndarray:
    w, h = garments.image_size
    masks = np.zeros((len(garments), h, w), bool)
    for i, box in enumerate(garments.boxes):
        x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
        x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        masks[i, y0:y1, x0:x1] = True
        if person_mask is not None:
            inside = masks[i] & person_mask
            if inside.sum() > 0.05 * masks[i].sum():  # a box the person mask misses keeps its pixels
                masks[i] = inside
    return masks


class PersonMasker:
    """Person mask (from the pose stage) intersected with each box."""

    name = "person"

    def mask(self, image: np.ndarray, garments: Garments, pose: PoseVerdict | None = None) -> Garments:
        person = pose.person_mask if pose is not None else None
        return garments.with_masks(_box_masks(garments, person))


class SamMasker:
    """segment-anything with box prompts: the image embedding is computed once per photo,
    then all boxes go through the prompt decoder in one batch.

    Args:
        checkpoint: SAM .pth (vit_b / vit_l / vit_h), or None for an untrained model (tests).
        arch: the registry key in ``segment_anything.sam_model_registry``.
    """

    name = "sam"

    def __init__(self, *, checkpoint: Path | None, arch: str = "vit_b", device: str = "auto"):
        from segment_anything import SamPredictor, sam_model_registry  # noqa: PLC0415

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        sam = sam_model_registry[arch](checkpoint=str(checkpoint) if checkpoint else None)
        self.predictor = SamPredictor(sam.to(device).eval())
        self.device = device

    @torch.inference_mode()
    def mask(self, image: np.ndarray, garments: Garments, pose: PoseVerdict | None = None) -> Garments:
        if len(garments) == 0:
            return garments.with_masks(np.zeros((0, *image.shape[:2]), bool))
        self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
        boxes = torch.as_tensor(garments.boxes, device=self.device)
        boxes = self.predictor.transform.apply_boxes_torch(boxes, image.shape[:2])
        masks, _, _ = self.predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
        masks = masks[:, 0].cpu().numpy()
        # SAM inside its box only: a prompt can leak onto a neighbouring garment
        return garments.with_masks(masks & _box_masks(garments, None))


MASKERS = {"person": PersonMasker, "sam": SamMasker}


def build_masker(backend: str = "person", **kw):
    if backend not in MASKERS:
        raise ValueError(f"unknown mask backend '{backend}'; choose one of {sorted(MASKERS)}")
    return MASKERS[backend](**kw)
