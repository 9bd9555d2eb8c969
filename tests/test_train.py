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
