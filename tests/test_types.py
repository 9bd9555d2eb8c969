import numpy as np
import pytest

from pipeline.types import Garment, Garments


def _g(n=3, size=(50, 40)):
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4]], np.float32)[:n]
    return Garments(boxes, ["upper", "lower", "footwear"][:n], ["t-shirt", "pants", "shoes"][:n],
                    [0.9, 0.5, 0.2][:n], size)


def test_select_and_view():
    g = _g()
    kept = g[g.scores > 0.3]
    assert len(kept) == 2 and list(kept.categories) == ["upper", "lower"]
    one = g[1]
    assert isinstance(one, Garment) and one.box == (5.0, 5.0, 20.0, 30.0) and one.label == "pants"


def test_shapes_checked():
    with pytest.raises(ValueError, match="unknown garment categories"):
        Garments(np.zeros((1, 4)), ["hat"], ["hat"], [1.0], (10, 10))
    with pytest.raises(ValueError, match="masks must be"):
        _g().with_masks(np.zeros((3, 10, 10), bool))


def test_with_masks_returns_new_record():
    g = _g()
    m = g.with_masks(np.zeros((3, 40, 50), bool))
    assert g.masks is None and m.masks.shape == (3, 40, 50)


def test_from_list_round_trip():
    g = _g()
    again = Garments.from_list(list(g), g.image_size)
    assert np.array_equal(again.boxes, g.boxes) and list(again.labels) == list(g.labels)
