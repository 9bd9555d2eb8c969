import pytest

from detectors.pose import MediapipePose, verdict_from_keypoints
from pipeline.images import load_image

from .conftest import CATALOG, FULL_BODY, NO_PERSON, PEOPLE


@pytest.fixture(scope="module")
def pose():
    return MediapipePose()


@pytest.mark.parametrize("name", FULL_BODY)
def test_full_body_people_are_found(pose, name):
    v = pose.check(load_image(PEOPLE / name))
    assert v.person and v.full_body, v.reason
    assert v.keypoints.shape == (33, 3) and v.person_mask is not None


@pytest.mark.parametrize("name", ["deepfasion2_000264.jpg", "deepfasion2_000265.jpg"])
def test_mirror_selfie_is_kept_through_the_person_mask(pose, name):
    v = pose.check(load_image(PEOPLE / name))
    assert v.person and not v.full_body and v.keypoints is None
    assert v.person_mask.mean() > 0.2 and "person mask" in v.reason


@pytest.mark.parametrize("name", sorted(p.name for p in NO_PERSON.glob("*.jpg")))
def test_no_person_photos(pose, name):
    v = pose.check(load_image(NO_PERSON / name))
    assert not v.person and "single garment" in v.reason


def test_back_view_is_not_frontal():
    import numpy as np

    from detectors.pose import COCO_KEYPOINTS

    kps = np.zeros((17, 3), np.float32)
    pts = {"left_shoulder": (40, 20), "right_shoulder": (60, 20), "left_hip": (45, 60), "right_hip": (55, 60),
           "left_knee": (45, 90), "right_knee": (55, 90), "left_ankle": (45, 120), "right_ankle": (55, 120)}
    for n, (x, y) in pts.items():
        kps[COCO_KEYPOINTS.index(n)] = (x, y, 1.0)
    v = verdict_from_keypoints(kps, COCO_KEYPOINTS, (100, 130))
    assert v.full_body and not v.frontal and "faces away" in v.reason


def test_a_skeleton_on_a_flat_garment_is_not_a_person(pose):
    # BlazePose puts a confident skeleton on this jacket laid flat (no face, no legs); taken for a
    # person, its garment regions cut the product apart. Without a face or visible knees the
    # keypoints do not count, and the photo is searched whole.
    img = load_image(CATALOG / "test" / "outwear" / "4b319ef4-36eb-431f-8627-dba90b8b3bed.jpg")
    assert MediapipePose(require_face_or_legs=False).check(img).keypoints is not None
    v = pose.check(img)
    assert not v.person and v.keypoints is None and "single garment" in v.reason
