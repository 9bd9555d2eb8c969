import numpy as np
import torch

from pipeline.evaluate import make_queries
from pipeline.metrics import average_precision_at_k, box_iou, map_at_k, recall_at_k


def test_recall_at_k_on_hand_made_rankings():
    ranks = np.array([[3, 1, 2], [0, 2, 1], [2, 0, 1], [1, 2, 0]])
    truth = np.array([3, 2, 1, 5])
    assert recall_at_k(ranks, truth, 1) == 0.25
    assert recall_at_k(ranks, truth, 2) == 0.5
    assert recall_at_k(ranks, truth, 3) == 0.75


def test_average_precision_at_k():
    assert average_precision_at_k(np.array([7, 1, 2]), {7}, 5) == 1.0
    assert average_precision_at_k(np.array([1, 7, 2]), {7}, 5) == 0.5
    assert average_precision_at_k(np.array([1, 2, 3, 4, 5, 7]), {7}, 5) == 0.0
    # two relevant items at ranks 1 and 3: (1/1 + 2/3) / 2
    assert abs(average_precision_at_k(np.array([4, 0, 9]), {4, 9}, 5) - (1 + 2 / 3) / 2) < 1e-9
    assert map_at_k(np.array([[7, 1], [1, 7]]), np.array([7, 7]), 5) == 0.75


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert abs(box_iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9


def test_query_protocol_is_deterministic():
    g = torch.Generator().manual_seed(3)
    imgs = [torch.randint(0, 255, (3, 80, 60), generator=g, dtype=torch.uint8) for _ in range(3)]
    bgs = [torch.rand(3, 100, 100, generator=g)]
    a, ta = make_queries(imgs, bgs, seed=7, per_photo=2, size=64)
    b, tb = make_queries(imgs, bgs, seed=7, per_photo=2, size=64)
    c, _ = make_queries(imgs, bgs, seed=8, per_photo=2, size=64)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and np.array_equal(ta, tb)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert list(ta) == [0, 0, 1, 1, 2, 2] and a[0].shape == (64, 64, 3)
