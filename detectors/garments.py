"""Garment detection: boxes with a category (upper, lower, footwear, dress) and a label.

Backends (registry ``GARMENT_DETECTORS``):
- ``yolo``: an ultralytics detector from a local .pt; its class names map to our categories.
- ``pose-regions``: the offline default while no garment detector weights exist: boxes from
  body keypoints, widened to the person mask; our model's class head picks upper+lower vs
  dress and labels each region.
Every backend treats a photo without a person as one garment: the whole photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.images import ImageError, crop_masked
from pipeline.types import Garments, PoseVerdict

# Detector label sets -> our categories (None: not a garment we index).
CLASS_MAPS: dict[str, dict[str, str | None]] = {
    "deepfashion2": {
        "short_sleeved_shirt": "upper", "long_sleeved_shirt": "upper", "short_sleeved_outwear": "upper",
        "long_sleeved_outwear": "upper", "vest": "upper", "sling": "upper", "shorts": "lower",
        "trousers": "lower", "skirt": "lower", "short_sleeved_dress": "dress",
        "long_sleeved_dress": "dress", "vest_dress": "dress", "sling_dress": "dress",
    },
    "modanet": {
        "bag": None, "belt": None, "boots": "footwear", "footwear": "footwear", "outer": "upper",
        "dress": "dress", "sunglasses": None, "pants": "lower", "top": "upper", "shorts": "lower",
        "skirt": "lower", "headwear": None, "scarf & tie": None,
    },
    "fashionpedia": {
        "shirt, blouse": "upper", "top, t-shirt, sweatshirt": "upper", "sweater": "upper",
        "cardigan": "upper", "jacket": "upper", "vest": "upper", "pants": "lower", "shorts": "lower",
        "skirt": "lower", "coat": "upper", "dress": "dress", "jumpsuit": "dress", "cape": "upper",
        "shoe": "footwear", "glasses": None, "hat": None, "tie": None, "glove": None, "watch": None,
        "belt": None, "bag, wallet": None, "scarf": None, "umbrella": None, "sock": None,
        "tights, stockings": None, "leg warmer": None,
    },
    "ccp": {
        "top": "upper", "outerwear": "upper", "trousers": "lower", "shorts": "lower", "skirt": "lower",
        "dress": "dress", "shoes": "footwear", "bag": None, "accessory": None,
    },
}

MIN_BOX_SIDE = 8  # pixels; a smaller region holds nothing to search
BOX_REGIONS = ("upper", "lower", "dress", "footwear")  # the other region keys are y levels

UPPER_CLASSES = ("t-shirt", "shirt", "longsleeve", "outwear")
LOWER_CLASSES = ("pants", "shorts", "skirt")


def whole_photo(image: np.ndarray, classifier=None) -> Garments:
    """A photo with no person is one garment; our class head names its category if it can."""
    h, w = image.shape[:2]
    category, label, score = "upper", "unknown", 0.0
    if classifier is not None:
        cls_probs = classifier.classify([image])
        probs = classifier.category_probs(cls_probs)
        category = max(probs, key=lambda c: probs[c][0])
        score = float(probs[category][0])
        label = classifier.classes[int(np.argmax(cls_probs[0]))]
    return Garments(np.array([[0, 0, w, h]]), [category], [label], [score], (w, h))


def region(image: np.ndarray, box, classifier=None, category: str | None = None) -> Garments:
    """A region the user drew, as one garment: our class head (or ``category``) names it.

    Raises:
        ImageError: the box is outside the image or too small to hold a garment.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = _clip(box, w, h)
    if not _big_enough((x0, y0, x1, y1)):
        raise ImageError(f"box {list(box)} holds less than {MIN_BOX_SIDE} px a side inside the {w}x{h} photo",
                         "too_small")
    one = whole_photo(image[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))], classifier)
    cat = category or str(one.categories[0])
    return Garments(np.array([[x0, y0, x1, y1]]), [cat], [str(one.labels[0])], [float(one.scores[0])], (w, h))


class YoloGarmentDetector:
    """Ultralytics YOLO garment detector from a local checkpoint."""

    name = "yolo"

    def __init__(self, *, checkpoint: Path, class_map: str | dict = "deepfashion2", conf: float = 0.3,
                 imgsz: int = 640, device: str | None = None, classifier=None):
        from detectors.yolo import load_yolo  # noqa: PLC0415

        self.model = load_yolo(checkpoint)
        self.class_map = CLASS_MAPS[class_map] if isinstance(class_map, str) else class_map
        self.conf, self.imgsz, self.device = conf, imgsz, device
        self.classifier = classifier

    def detect(self, image: np.ndarray, pose: PoseVerdict | None = None) -> Garments:
        from detectors.yolo import garments_from_ultralytics  # noqa: PLC0415

        h, w = image.shape[:2]
        res = self.model.predict(image[..., ::-1], conf=self.conf, imgsz=self.imgsz, device=self.device,
                                 verbose=False)[0]
        found = garments_from_ultralytics(res, self.class_map, (w, h))
        if len(found) == 0 and (pose is None or not pose.person):
            return whole_photo(image, self.classifier)
        return found


class PoseRegionDetector:
    """Garment boxes from body keypoints and the person mask.

    Regions: shoulders-hips (upper), hips-ankles (lower), around the ankles/heels (footwear,
    one box for the pair), shoulders-knees (dress). The class head of our model, run on the
    masked regions, decides dress vs upper+lower and shortens the lower box for shorts and
    skirts. Without keypoints but with a person mask the regions are proportions of the mask.

    Args:
        classifier: a ``ReidEmbedder`` (its ``classify``); None labels regions generically.
        dress_threshold: P(dress) of the shoulders-knees crop above which it is one dress.
        min_visibility: keypoint visibility needed to use a keypoint.
        hemline: shorten the lower box when the class head says shorts or skirt.
    """

    name = "pose-regions"

    def __init__(self, *, classifier=None, dress_threshold: float = 0.5, min_visibility: float = 0.3,
                 hemline: bool = True):
        self.classifier = classifier
        self.hemline = hemline
        self.dress_threshold = dress_threshold
        self.min_visibility = min_visibility

    def detect(self, image: np.ndarray, pose: PoseVerdict | None = None) -> Garments:
        h, w = image.shape[:2]
        if pose is None or not pose.person:
            return whole_photo(image, self.classifier)
        regions = self._regions_from_keypoints(pose, w, h) if pose.keypoints is not None else None
        if regions is None and pose.person_mask is not None:
            regions = self._regions_from_mask(pose.person_mask)
        if regions is None:
            return whole_photo(image, self.classifier)
        # keypoints outside the frame (feet, or a guessed body on a product shot) clip to a sliver
        regions = {k: v for k, v in regions.items() if k not in BOX_REGIONS or _big_enough(v)}
        if not {"upper", "lower", "dress"} <= set(regions):
            return whole_photo(image, self.classifier)
        return self._label(image, pose, regions, (w, h))

    # -- geometry ---------------------------------------------------------------------------
    def _pt(self, pose: PoseVerdict, name: str):
        return pose.point(name, self.min_visibility)

    def _mean(self, pose, *names):
        pts = [p for p in (self._pt(pose, n) for n in names) if p is not None]
        return np.mean(pts, axis=0) if pts else None

    def _regions_from_keypoints(self, pose: PoseVerdict, w: int, h: int) -> dict | None:
        sh, hip = self._mean(pose, "left_shoulder", "right_shoulder"), self._mean(pose, "left_hip", "right_hip")
        if sh is None or hip is None:
            return None
        torso = max(8.0, float(np.linalg.norm(hip - sh)))
        knee = self._mean(pose, "left_knee", "right_knee")
        ankle = self._mean(pose, "left_ankle", "right_ankle")
        if knee is None:
            knee = hip + np.array([0, 0.9 * torso])
        if ankle is None:
            ankle = knee + (knee - hip)
        mask = pose.person_mask
        xs = [p[0] for p in (self._pt(pose, n) for n in ("left_shoulder", "right_shoulder", "left_hip",
                                                           "right_hip")) if p is not None]
        upper = self._widen(mask, (min(xs), sh[1] - 0.12 * torso, max(xs), hip[1] + 0.12 * torso), w, h)
        lower = self._widen(mask, (min(xs), hip[1] - 0.08 * torso, max(xs), ankle[1] + 0.06 * torso), w, h)
        dress = self._widen(mask, (min(xs), sh[1] - 0.12 * torso, max(xs), knee[1] + 0.15 * torso), w, h)
        regions = {"upper": upper, "lower": lower, "dress": dress, "hip_y": hip[1], "knee_y": knee[1]}
        feet = [p for p in (self._pt(pose, n) for n in ("left_ankle", "right_ankle", "left_heel", "right_heel",
                                                         "left_foot_index", "right_foot_index")) if p is not None]
        if feet:
            shin = float(np.linalg.norm(ankle - knee)) or 0.5 * torso
            f = np.array(feet)
            pad = 0.22 * shin
            regions["footwear"] = _clip((f[:, 0].min() - pad, f[:, 1].min() - 0.6 * pad,
                                         f[:, 0].max() + pad, f[:, 1].max() + pad), w, h)
        return regions

    @staticmethod
    def _regions_from_mask(mask: np.ndarray) -> dict | None:
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            return None
        x0, x1 = np.percentile(xs, [1, 99])
        y0, y1 = np.percentile(ys, [1, 99])
        hgt = y1 - y0
        return {"upper": (x0, y0, x1, y0 + 0.5 * hgt), "lower": (x0, y0 + 0.45 * hgt, x1, y1),
                "dress": (x0, y0, x1, y0 + 0.85 * hgt), "hip_y": y0 + 0.45 * hgt, "knee_y": y0 + 0.75 * hgt}

    @staticmethod
    def _widen(mask: np.ndarray | None, box, w: int, h: int):
        """Stretch a box horizontally to the person mask inside its rows (sleeves, wide legs)."""
        x0, y0, x1, y1 = _clip(box, w, h)
        if mask is not None:
            band = mask[int(y0):int(y1) + 1]
            cols = np.nonzero(band.any(axis=0))[0]
            if len(cols):
                col_mass = band.sum(axis=0)
                keep = np.nonzero(col_mass >= 0.05 * col_mass.max())[0]
                x0, x1 = min(x0, float(keep.min())), max(x1, float(keep.max()) + 1)
        return _clip((x0, y0, x1, y1), w, h)

    # -- labelling --------------------------------------------------------------------------
    def _label(self, image, pose, regions, size) -> Garments:
        names = [k for k in ("upper", "lower", "dress") if k in regions]
        boxes = {k: regions[k] for k in names}
        labels, scores = {"upper": "upper", "lower": "lower", "dress": "dress"}, dict.fromkeys(names, 0.5)
        use_dress = False
        if self.classifier is not None:
            crops = [crop_masked(image, boxes[k], pose.person_mask) for k in names]
            probs = self.classifier.classify(crops)
            cls = list(self.classifier.classes)
            p = {k: dict(zip(cls, probs[i])) for i, k in enumerate(names)}
            labels["upper"] = max(UPPER_CLASSES, key=lambda c: p["upper"][c])
            labels["lower"] = max(LOWER_CLASSES, key=lambda c: p["lower"][c])
            scores["upper"] = sum(p["upper"][c] for c in UPPER_CLASSES)
            scores["lower"] = sum(p["lower"][c] for c in LOWER_CLASSES)
            scores["dress"] = p["dress"]["dress"]
            use_dress = scores["dress"] >= self.dress_threshold and scores["dress"] > scores["upper"]
            if self.hemline:
                boxes["lower"] = self._hemline(boxes["lower"], labels["lower"], regions)
        out = ["dress"] if use_dress else ["upper", "lower"]
        if "footwear" in regions:
            out.append("footwear")
            boxes["footwear"], labels["footwear"], scores["footwear"] = regions["footwear"], "shoes", 0.5
        return Garments(np.array([boxes[k] for k in out]), out, [labels[k] for k in out],
                        [float(scores[k]) for k in out], size)

    @staticmethod
    def _hemline(box, label: str, regions: dict):
        """Shorts end mid-thigh and skirts around the knee; trousers keep the ankle."""
        x0, y0, x1, y1 = box
        hip, knee = regions["hip_y"], regions["knee_y"]
        if label == "shorts":
            y1 = min(y1, hip + 0.6 * (knee - hip))
        elif label == "skirt":
            y1 = min(y1, knee + 0.25 * (knee - hip))
        return (x0, y0, x1, y1)


def _big_enough(box) -> bool:
    return min(box[2] - box[0], box[3] - box[1]) >= MIN_BOX_SIDE


def _clip(box, w: int, h: int):
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((min(max(x0, 0), w), min(max(x1, 0), w)))
    y0, y1 = sorted((min(max(y0, 0), h), min(max(y1, 0), h)))
    return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


GARMENT_DETECTORS = {"pose-regions": PoseRegionDetector, "yolo": YoloGarmentDetector}


def build_garment_detector(backend: str = "pose-regions", **kw):
    if backend not in GARMENT_DETECTORS:
        raise ValueError(f"unknown garment detector '{backend}'; choose one of {sorted(GARMENT_DETECTORS)}")
    return GARMENT_DETECTORS[backend](**kw)
