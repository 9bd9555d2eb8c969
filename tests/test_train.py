import json

import torch

from detectors.reid import CLASSES, build_reid
from pipeline.dataset import clothing_split, load_small
from pipeline.train import ArcFace, TrainConfig, TwoViews, compute_loss, train

from .conftest import CATALOG


def test_two_steps_on_real_photos_lower_the_loss():
    torch.manual_seed(0)
    photos = clothing_split("train", CATALOG)[::200][:8]
    cfg = TrainConfig(image_size=64, embed_dim=64)
    data = TwoViews(load_small(photos, 96), [CLASSES.index(p.label) for p in photos], 64, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=8)))
    model, _ = build_reid(embed_dim=64)
    model.train()
    arc = ArcFace(64, 8, cfg.arc_scale, cfg.arc_margin)
    opt = torch.optim.SGD([*model.parameters(), *arc.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(3):
        loss = compute_loss(model, arc, batch, cfg, torch.device("cpu"))[0]
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[2] < losses[0], losses


def test_train_writes_checkpoint_log_and_resumes(tmp_path):
    kw = dict(data=str(CATALOG), out=str(tmp_path / "run"), subset=16, batch_size=8, image_size=64,
              epochs=2, workers=0, embed_dim=64)
    train(TrainConfig(max_steps=2, **kw))  # stops inside epoch 1
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["step"] == 2
    release = train(TrainConfig(**kw))  # resumes at epoch 2
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert release.is_file() and (tmp_path / "run" / "training.png").is_file()
    model, cfg = build_reid(checkpoint=release)
    assert cfg["embed_dim"] == 64 and cfg["trained"]["epochs"] == 2


def test_schedule_cut_to_a_time_budget_ends_the_cosine_at_the_new_length():
    from pipeline.train import Schedule

    s = Schedule(epochs=300, steps_per_epoch=10, warmup_epochs=1.0)
    assert s(0) == 0.1 and s(9) == 1.0
    # 2 epochs done at 8 s each + 1 s of validation per epoch, 100 s left: 5% spare and 3 epochs kept back
    assert s.fit(100, done=2, epoch_s=8, val_s_per_epoch=1) == 2 + int((95 - 27) // 9)
    assert s.fit(1, done=2, epoch_s=8, val_s_per_epoch=1) == 3  # always at least one more epoch
    s.epochs = 9
    assert s(89) > 0 and s(90) == 0.0 and s(200) == 0.0  # cut schedule reaches zero and stays there


def test_gem_gives_finite_gradients_when_a_channel_is_dead_everywhere():
    from detectors.reid import GeM

    pool = GeM(p=6.0)
    x = torch.rand(2, 4, 7, 7)
    x[:, 1] = 0  # a channel ReLU killed over the whole map
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pool(x.bfloat16())
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(pool.p.grad).all()


def test_init_from_a_release_seeds_the_proxies_with_its_embeddings(tmp_path):
    kw = dict(data=str(CATALOG), subset=16, batch_size=8, image_size=64, workers=0, embed_dim=64)
    first = train(TrainConfig(out=str(tmp_path / "a"), epochs=1, **kw))
    before = build_reid(checkpoint=first)[0].state_dict()
    second = train(TrainConfig(out=str(tmp_path / "b"), epochs=1, init=str(first), lr=1e-6, **kw))
    after = build_reid(checkpoint=second)[0].state_dict()
    # a near-zero learning rate keeps the conv weights where the first run left them
    w = "backbone.conv1.0.weight"
    assert torch.allclose(before[w], after[w], atol=1e-2)
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    first_log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log[0]["arcface"] < first_log[0]["arcface"]  # proxies start at the photos' own embeddings


def test_pack_keeps_the_layout_at_the_training_size(tmp_path):
    from PIL import Image

    from pipeline.dataset import clothing_split, pack_photos

    src = tmp_path / "src"
    for split in ("train", "test"):
        (src / "clothing-dataset-small" / split / "shoes").mkdir(parents=True)
        Image.new("RGB", (640, 480), (200, 10, 10)).save(src / "clothing-dataset-small" / split / "shoes" / "a.png")
    (src / "no-person").mkdir()
    Image.new("RGB", (800, 600)).save(src / "no-person" / "bg.jpg")
    (src / "no-person" / "broken.jpg").write_bytes(b"%PDF-1.4 not a photo")  # a PDF named .jpg
    n, size, skipped = pack_photos(tmp_path / "pack", src, longer_side=128)
    assert n == 3 and size > 0
    assert len(skipped) == 1 and "broken.jpg" in skipped[0] and not (tmp_path / "pack" / "no-person" / "broken.jpg").exists()
    photos = clothing_split("train", tmp_path / "pack" / "clothing-dataset-small")
    assert [p.label for p in photos] == ["shoes"] and Image.open(photos[0].path).size == (128, 96)
    assert (tmp_path / "pack" / "no-person" / "bg.jpg").is_file()
