"""Each official loader runs on a checkpoint of the same architecture and file format, made
here with random init: the real loading code runs, outputs have the right shapes and norms."""

import numpy as np
import pytest
import torch

from pipeline.images import ImageError, load_image

from .conftest import PEOPLE


def _crops(n=3):
    img = load_image(PEOPLE / "fld_img_00000128.jpg")
    return [img, img[:100], img[50:, 20:150]][:n]


def _unit_rows(z, dim):
    assert z.dtype == np.float32 and z.shape[1] == dim
    assert np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-4)


@pytest.mark.slow
def test_open_clip_vit_b32_checkpoint(tmp_path):
    import open_clip

    from detectors.embedders import build_embedder

    model = open_clip.create_model("ViT-B-32")
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)  # the layout open_clip publishes
    emb = build_embedder("fashion-clip", checkpoint=path, arch="ViT-B-32", device="cpu")
    z = emb.embed(_crops())
    _unit_rows(z, 512)
    assert z.shape[0] == 3
    _unit_rows(emb.embed_text(["a red dress", "white sneakers"]), 512)
    ref = model.eval().encode_image(torch.zeros(1, 3, 224, 224))  # same weights were loaded
    got = emb.model.encode_image(torch.zeros(1, 3, 224, 224))
    assert torch.allclose(ref, got, atol=1e-5)


@pytest.mark.slow
def test_dinov2_official_key_names(tmp_path):
    import timm

    from detectors.embedders import build_embedder

    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)  # 518 px, as released
    state = ref.state_dict()
    state["mask_token"] = torch.zeros(1, 384)  # official checkpoints carry it; timm has none
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    emb = build_embedder("dinov2", checkpoint=path, device="cpu")
    _unit_rows(emb.embed(_crops()), 384)
    assert torch.equal(emb.model.blocks[3].attn.qkv.weight, ref.blocks[3].attn.qkv.weight)


@pytest.mark.slow
def test_sam_vit_b_checkpoint_masks_all_boxes_in_one_call(tmp_path):
    from segment_anything import sam_model_registry

    from detectors.masks import build_masker
    from pipeline.types import Garments

    path = tmp_path / "sam_vit_b.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    masker = build_masker("sam", checkpoint=path, arch="vit_b", device="cpu")
    img = load_image(PEOPLE / "fld_img_00000128.jpg")
    g = Garments(np.array([[20, 20, 150, 120], [30, 110, 160, 240]]), ["upper", "lower"], ["a", "b"], [1, 1],
                 (img.shape[1], img.shape[0]))
    out = masker.mask(img, g)
    assert out.masks.shape == (2, 250, 200) and out.masks.dtype == bool
    assert not out.masks[0, :, :19].any()  # kept inside its box


@pytest.mark.slow
def test_ultralytics_detector_and_pose_checkpoints(tmp_path):
    from ultralytics import YOLO

    from detectors.garments import CLASS_MAPS, build_garment_detector
    from detectors.pose import build_pose_checker

    det = YOLO("yolo11n.yaml")
    names = list(CLASS_MAPS["deepfashion2"]) + [f"other{i}" for i in range(80 - 13)]
    det.model.names = dict(enumerate(names))
    det.save(tmp_path / "garments.pt")
    detector = build_garment_detector("yolo", checkpoint=tmp_path / "garments.pt", class_map="deepfashion2",
                                      conf=0.0001, imgsz=128, device="cpu")
    img = load_image(PEOPLE / "fld_img_00000128.jpg")
    g = detector.detect(img)
    assert g.boxes.shape[1] == 4 and set(g.categories) <= {"upper", "lower", "dress", "footwear"}
    assert len(g) >= 1  # random weights at conf 1e-4 give boxes, or the whole-photo fallback

    YOLO("yolo11n-pose.yaml").save(tmp_path / "pose.pt")
    pose = build_pose_checker("yolo-pose", checkpoint=tmp_path / "pose.pt", conf=0.0001, imgsz=128, device="cpu")
    v = pose.check(img)
    assert v.keypoints is None or v.keypoints.shape == (17, 3)

    # with ultralytics loaded, a corrupt upload is still a clear ImageError (no pi-heif install try)
    with pytest.raises(ImageError, match="corrupt"):
        load_image(b"\xff\xd8\xff" + b"junk" * 10)


def test_reid_release_round_trip_gives_identical_embeddings(tmp_path):
    from detectors.embedders import build_embedder
    from detectors.reid import build_reid, save_release

    model, cfg = build_reid(backbone="resnet10t", embed_dim=128)
    save_release(model, cfg, tmp_path / "r.pt")
    a = build_embedder("reid", checkpoint=tmp_path / "r.pt", device="cpu")
    b = build_embedder("reid", checkpoint=tmp_path / "r.pt", device="cpu")
    za, zb = a.embed(_crops()), b.embed(_crops())
    _unit_rows(za, 128)
    assert np.array_equal(za, zb)
    assert a.classify(_crops()).shape == (3, 10)


def test_catalog_views_average_the_crop_and_its_centre(tmp_path):
    from detectors.embedders import build_embedder, center_crop
    from detectors.reid import build_reid, save_release
    from pipeline.look import model_signature

    model, cfg = build_reid(backbone="resnet10t", embed_dim=64)
    save_release(model, cfg, tmp_path / "r.pt")
    plain = build_embedder("reid", checkpoint=tmp_path / "r.pt", device="cpu")
    views = build_embedder("reid", checkpoint=tmp_path / "r.pt", device="cpu", catalog_views=[0.8])
    crops = _crops()
    assert center_crop(crops[0], 0.8).shape[:2] == tuple(round(0.8 * s) for s in crops[0].shape[:2])
    want = plain.embed(crops) + plain.embed([center_crop(c, 0.8) for c in crops])
    got = views.embed_catalog(crops)
    _unit_rows(got, 64)
    assert np.allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    assert np.array_equal(views.embed(crops), plain.embed(crops))  # the query side is unchanged
    assert np.array_equal(plain.embed_catalog(crops), plain.embed(crops))
    assert views.embed_catalog([]).shape == (0, 64)
    # an index records the views (its vectors depend on them); without views, the signature of
    # indexes built before views existed
    assert model_signature(views, None)["recall"]["catalog_views"] == [0.8]
    assert "catalog_views" not in model_signature(plain, None)["recall"]
    with pytest.raises(ValueError, match="catalog_views"):
        build_embedder("reid", checkpoint=tmp_path / "r.pt", device="cpu", catalog_views=[1.5])


def test_local_descriptors_score_as_a_weighted_chamfer_similarity(tmp_path):
    from detectors.embedders import build_embedder
    from detectors.reid import build_reid, save_release
    from indexes.category import part_similarity
    from pipeline.look import model_signature

    model, cfg = build_reid(backbone="resnet10t", embed_dim=64)
    save_release(model, cfg, tmp_path / "r.pt")
    local = build_embedder("reid-local", checkpoint=tmp_path / "r.pt", device="cpu", image_size=128)
    assert (local.parts, local.part_dim, local.dim) == (16, 64, 16 * 64)  # a 4 x 4 feature map at 128 px
    crops = _crops()
    q = local.embed(crops).reshape(3, 16, 64)
    g = local.embed_catalog(crops).reshape(3, 16, 64)
    assert np.allclose(np.linalg.norm(g, axis=2), 1, atol=1e-5)  # catalog parts: unit descriptors
    weights = np.linalg.norm(q, axis=2)  # query parts: unit descriptors scaled by their cell's weight
    assert np.allclose(weights.sum(1), 1, atol=1e-5) and (weights >= 0).all()
    assert np.allclose(q / weights[:, :, None], g, atol=1e-4)  # same descriptors on both sides
    # sum over query parts of the best match among the candidate's parts, by hand
    want = [sum(max(float(qi @ gj) for gj in g[c]) for qi in q[0]) for c in range(3)]
    assert np.allclose(part_similarity(g.reshape(3, -1), q[0].reshape(-1), 16), want, atol=1e-5)
    assert part_similarity(g.reshape(3, -1), q[0].reshape(-1), 16)[0] == pytest.approx(1, abs=1e-4)  # itself
    flat = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    assert np.allclose(part_similarity(flat, flat[0]), flat @ flat[0], atol=1e-5)  # 1 part: inner product
    assert model_signature(local, local)["rerank"]["parts"] == 16
    assert np.array_equal(local.merge_photos(g.reshape(3, -1)), g[0].reshape(-1))  # a product's first photo
    # the look's one pass: the recall embedding of the same weights and input comes with the parts
    recall = build_embedder("reid", checkpoint=tmp_path / "r.pt", device="cpu", image_size=128)
    assert local.shares_forward(recall) and not local.shares_forward(build_embedder(
        "reid", checkpoint=tmp_path / "r.pt", device="cpu", image_size=160))
    glob, rows = local.embed_with_global(crops)
    assert np.allclose(glob, recall.embed(crops), atol=1e-5) and np.allclose(rows, local.embed(crops), atol=1e-6)
    with pytest.raises(ValueError, match="catalog_views"):
        build_embedder("reid-local", checkpoint=tmp_path / "r.pt", device="cpu", catalog_views=[0.8])
