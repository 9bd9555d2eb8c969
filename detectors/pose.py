"""Pose check: is this a usable full-body, front-facing photo of a person?

Backends (registry ``POSE_CHECKERS``): ``mediapipe`` (BlazePose, weights bundled in the wheel:
the offline default, also gives a person mask), ``yolo-pose`` (ultralytics, COCO keypoints) and
``mmpose`` (RTMPose through MMPoseInferencer, optional extra). All return a ``PoseVerdict``
with keypoints named the same way for the parts the garment stages use.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from pipeline.types import PoseVerdict

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
_BODY = ("shoulder", "hip", "knee", "ankle")


def verdict_from_keypoints(
    keypoints: np.ndarray | None,
    names: tuple[str, ...],
    image_size: tuple[int, int],
    person_mask: np.ndarray | None = None,
    *,
    min_visibility: float = 0.5,
    min_shoulder_ratio: float = 0.25,
) -> PoseVerdict:
    """Judge a photo from one person's keypoints (K, 3): x, y pixels and visibility.

    Full body: both shoulders, hips, knees and ankles visible and inside the frame.
    Frontal: the shoulders are wide relative to the torso (not a profile) and the person's
    left shoulder is on the right of the image (facing the camera, not their back).
    """
    if keypoints is None:
        if person_mask is not None:
            return PoseVerdict(True, False, False, "a person is visible but no body keypoints were found "
                               "(cropped or unusual pose); garments are searched from the person mask",
                               None, names, person_mask)
        return PoseVerdict(False, False, False, "no person found: searched as a single garment",
                           None, names, person_mask)
    v = PoseVerdict(True, False, False, "", keypoints, names, person_mask)
    w, h = image_size
    missing = []
    for part in _BODY:
        for side in ("left", "right"):
            p = v.point(f"{side}_{part}", min_visibility)
            if p is None or not (0 <= p[0] < w and 0 <= p[1] < h):
                missing.append(f"{side} {part}")
    full_body = not missing
    ls, rs = v.point("left_shoulder", min_visibility), v.point("right_shoulder", min_visibility)
    lh, rh = v.point("left_hip", min_visibility), v.point("right_hip", min_visibility)
    frontal, why = False, "shoulders not both visible"
    if ls is not None and rs is not None:
        torso = np.linalg.norm((ls + rs) / 2 - (lh + rh) / 2) if lh is not None and rh is not None else None
        width = abs(ls[0] - rs[0])
        ratio = width / torso if torso else 1.0
        if ls[0] <= rs[0]:
            why = "the person faces away from the camera"
        elif ratio < min_shoulder_ratio:
            why = f"side view (shoulder width {ratio:.2f} of torso length)"
        else:
            frontal, why = True, ""
    parts = []
    parts.append("full body" if full_body else f"not full body (missing: {', '.join(missing)})")
    parts.append("front-facing" if frontal else f"not front-facing ({why})")
    return PoseVerdict(True, full_body, frontal, "; ".join(parts), keypoints, names, person_mask)


class MediapipePose:
    """BlazePose (full) with its segmentation output, plus selfie segmentation for the
    people BlazePose misses (mirror selfies with the head cut off)."""

    name = "mediapipe"

    def __init__(self, *, min_detection_confidence: float = 0.5, model_complexity: int = 1,
                 min_visibility: float = 0.5, mask_threshold: float = 0.5,
                 min_mask_area: float = 0.15, min_mask_confidence: float = 0.85,
                 require_face_or_legs: bool = True):
        """Args:
            min_mask_area: share of the photo a person mask must cover to count as a person
                when BlazePose finds no keypoints (such people are close-ups).
            min_mask_confidence: share of that mask that must be confident (p > 0.9); selfie
                segmentation also fires, less surely, on signs and animals.
            require_face_or_legs: BlazePose's keypoints count only with both knees visible or
                a face found by the full-range face detector. BlazePose puts a confident
                skeleton on a shirt laid flat (a product photo), and its garment regions then
                cut the product apart; without them the photo goes on to the person-mask check.
        """
        import mediapipe as mp  # noqa: PLC0415

        self._pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=model_complexity, enable_segmentation=True,
            min_detection_confidence=min_detection_confidence)
        self._selfie = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self._face = (mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
                      if require_face_or_legs else None)
        self.names = tuple(lm.name.lower() for lm in mp.solutions.pose.PoseLandmark)
        self._knees = [self.names.index(n) for n in ("left_knee", "right_knee")]
        self.min_visibility = min_visibility
        self.mask_threshold = mask_threshold
        self.min_mask_area, self.min_mask_confidence = min_mask_area, min_mask_confidence
        self._lock = threading.Lock()  # mediapipe graphs are not re-entrant

    def check(self, image: np.ndarray) -> PoseVerdict:
        """Judge an RGB uint8 (H, W, 3) photo."""
        h, w = image.shape[:2]
        image = np.ascontiguousarray(image)
        with self._lock:
            res = self._pose.process(image)
            kps = None if res.pose_landmarks is None else np.array(
                [[lm.x * w, lm.y * h, lm.visibility] for lm in res.pose_landmarks.landmark], np.float32)
            if kps is not None and not self._face_or_legs(image, kps):
                kps = None  # a skeleton on a garment, not a person
            if kps is None:
                seg = self._selfie.process(image).segmentation_mask
                return verdict_from_keypoints(None, self.names, (w, h), self._confident_person(seg))
        mask = res.segmentation_mask > self.mask_threshold if res.segmentation_mask is not None else None
        return verdict_from_keypoints(kps, self.names, (w, h), mask, min_visibility=self.min_visibility)


    def _face_or_legs(self, image: np.ndarray, kps: np.ndarray) -> bool:
        if self._face is None:
            return True
        if kps[self._knees, 2].min() >= self.min_visibility:
            return True
        return bool(self._face.process(image).detections)

    def _confident_person(self, seg: np.ndarray | None) -> np.ndarray | None:
        if seg is None:
            return None
        mask = seg > self.mask_threshold
        area = mask.mean()
        if area < self.min_mask_area or (seg > 0.9).mean() < self.min_mask_confidence * area:
            return None
        return mask


class YoloPose:
    """Ultralytics YOLO-pose (COCO 17 keypoints) from a local .pt; the largest person is judged."""

    name = "yolo-pose"

    def __init__(self, *, checkpoint: Path, conf: float = 0.25, imgsz: int = 640, device: str | None = None):
        from detectors.yolo import load_yolo  # noqa: PLC0415

        self.model = load_yolo(checkpoint)
        self.conf, self.imgsz, self.device = conf, imgsz, device

    def check(self, image: np.ndarray) -> PoseVerdict:
        from detectors.yolo import largest_person_keypoints  # noqa: PLC0415

        h, w = image.shape[:2]
        res = self.model.predict(image[..., ::-1], conf=self.conf, imgsz=self.imgsz, device=self.device,
                                 verbose=False)[0]
        return verdict_from_keypoints(largest_person_keypoints(res), COCO_KEYPOINTS, (w, h))


class MMPose:
    """RTMPose through mmpose's MMPoseInferencer with a local config and checkpoint.

    Needs the ``mmpose`` extra (mmcv is a heavy build, so it is not in the default install).
    """

    name = "mmpose"

    def __init__(self, *, config: str, checkpoint: Path, device: str = "cpu"):
        try:
            from mmpose.apis import MMPoseInferencer  # noqa: PLC0415
        except ImportError as e:
            raise ImportError("the mmpose backend needs `pip install .[mmpose]` (mmcv, mmpose)") from e
        self.inferencer = MMPoseInferencer(pose2d=config, pose2d_weights=str(checkpoint), device=device)

    def check(self, image: np.ndarray) -> PoseVerdict:
        h, w = image.shape[:2]
        result = next(self.inferencer(image[..., ::-1], return_vis=False))
        people = result["predictions"][0]
        if not people:
            return verdict_from_keypoints(None, COCO_KEYPOINTS, (w, h))
        best = max(people, key=lambda p: float(np.mean(p["keypoint_scores"])))
        kps = np.concatenate([np.asarray(best["keypoints"], np.float32)[:17],
                              np.asarray(best["keypoint_scores"], np.float32)[:17, None]], axis=1)
        return verdict_from_keypoints(kps, COCO_KEYPOINTS, (w, h))


POSE_CHECKERS = {"mediapipe": MediapipePose, "yolo-pose": YoloPose, "mmpose": MMPose}


def build_pose_checker(backend: str = "mediapipe", **kw):
    if backend not in POSE_CHECKERS:
        raise ValueError(f"unknown pose backend '{backend}'; choose one of {sorted(POSE_CHECKERS)}")
    return POSE_CHECKERS[backend](**kw)
