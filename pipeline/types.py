"""The data types every stage passes on.

Coordinates are pixels of the (EXIF-corrected) RGB image, boxes are ``x0, y0, x1, y1``.
Records are frozen: a stage returns a new one (``with_masks``, ``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

CATEGORIES = ("upper", "lower", "footwear", "dress")


@dataclass(frozen=True)
class Garment:
    """One detected garment, a view of one row of :class:`Garments`."""

    box: tuple[float, float, float, float]
    category: str
    label: str
    score: float
    mask: np.ndarray | None = None  # (H, W) bool over the whole image

    @property
    def box_int(self) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.box
        return int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))


@dataclass(frozen=True, eq=False)
class Garments:
    """All garments of one photo, one array per field (like supervision's ``Detections``).

    Attributes:
        boxes: (n, 4) float32 xyxy pixels.
        categories: (n,) str, each one of :data:`CATEGORIES`.
        labels: (n,) str, the detector's own class name (``t-shirt``, ``trousers`` ...).
        scores: (n,) float32 detector confidence in [0, 1].
        masks: (n, H, W) bool, or None before the mask stage.
        image_size: (width, height) of the photo the boxes refer to.
    """

    boxes: np.ndarray
    categories: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    masks: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.boxes)
        object.__setattr__(self, "boxes", np.asarray(self.boxes, np.float32).reshape(n, 4))
        object.__setattr__(self, "categories", np.asarray(self.categories, dtype=object).reshape(n))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=object).reshape(n))
        object.__setattr__(self, "scores", np.asarray(self.scores, np.float32).reshape(n))
        bad = [c for c in self.categories if c not in CATEGORIES]
        if bad:
            raise ValueError(f"unknown garment categories {bad}; expected one of {CATEGORIES}")
        if self.masks is not None:
            w, h = self.image_size
            masks = np.asarray(self.masks, bool)
            if masks.shape != (n, h, w):
                raise ValueError(f"masks must be (n, H, W) = {(n, h, w)}, got {masks.shape}")
            object.__setattr__(self, "masks", masks)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Garments:
        return cls(np.zeros((0, 4)), [], [], [], image_size)

    @classmethod
    def from_list(cls, items: list[Garment], image_size: tuple[int, int]) -> Garments:
        if not items:
            return cls.empty(image_size)
        masks = None
        if all(g.mask is not None for g in items):
            masks = np.stack([g.mask for g in items])
        return cls(
            np.array([g.box for g in items]),
            [g.category for g in items],
            [g.label for g in items],
            [g.score for g in items],
            image_size,
            masks,
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index) -> Garment | Garments:
        if isinstance(index, (int, np.integer)):
            return Garment(
                tuple(float(v) for v in self.boxes[index]),
                str(self.categories[index]),
                str(self.labels[index]),
                float(self.scores[index]),
                None if self.masks is None else self.masks[index],
            )
        return Garments(
            self.boxes[index],
            self.categories[index],
            self.labels[index],
            self.scores[index],
            self.image_size,
            None if self.masks is None else self.masks[index],
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def with_masks(self, masks: np.ndarray) -> Garments:
        return dataclasses.replace(self, masks=masks)


@dataclass(frozen=True)
class PoseVerdict:
    """Whether a photo is a usable full-body, front-facing shot of one person.

    ``keypoints`` is (K, 3) float32: x, y in pixels and a visibility in [0, 1], in the
    backend's own keypoint order (``keypoint_names``); None when no person was found.
    ``person_mask`` is an (H, W) bool mask of the person when the backend gives one.
    """

    person: bool
    full_body: bool
    frontal: bool
    reason: str
    keypoints: np.ndarray | None = None
    keypoint_names: tuple[str, ...] = ()
    person_mask: np.ndarray | None = None

    @property
    def usable(self) -> bool:
        return self.person and self.full_body and self.frontal

    def point(self, name: str, min_visibility: float = 0.5) -> np.ndarray | None:
        """(x, y) of a named keypoint, or None if absent or not visible enough."""
        if self.keypoints is None or name not in self.keypoint_names:
            return None
        x, y, v = self.keypoints[self.keypoint_names.index(name)]
        return np.array([x, y], np.float32) if v >= min_visibility else None


@dataclass(frozen=True)
class Match:
    """One catalog product matched to a garment, with each stage's score."""

    product_id: str
    score: float
    recall_score: float
    rerank_score: float | None = None
    product: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LookResult:
    """Everything a look returns: the pose verdict, each garment with its matches, timings."""

    pose: PoseVerdict
    garments: Garments
    matches: list[list[Match]]
    timings_ms: dict[str, float]
    notes: tuple[str, ...] = ()

    def items(self):
        return zip(self.garments, self.matches)
