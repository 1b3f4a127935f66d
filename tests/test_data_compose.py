"""PIN's composition function C (spec §B6): constraints on thousands of draws, hand-computed cases, errors."""

import numpy as np
import pytest
from groundvlm.recipes.toyworld import compose, pin_size_ranges
from groundvlm.recipes.toyworld.compose import overlap_sum
from PIL import Image

G = 16


def _solid(w, h, colour=(255, 0, 0)):
    return Image.new("RGBA", (w, h), (*colour, 255))


def _overlap_ratio_cells(a, b):
    """Reference overlap ratio for two inclusive grid boxes: intersection / area, max over both boxes."""
    iw = max(0, min(a[2], b[2]) + 1 - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) + 1 - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return max(inter / area_a, inter / area_b)


def _expected_other_side(longer, ratio):
    """The reference's sample_size rule for the shorter side (Python round, at least 1)."""
    return max(1, round(longer / ratio)) if ratio >= 1 else max(1, round(longer * ratio))


def test_pin_size_ranges_match_reference_defaults():
    # round(16 * [0.3, 0.2, 0.1]) = (5, 3, 2); round(16 * 1.0) = 16 -- spec §B6.
    assert pin_size_ranges(16) == ((5, 3, 2), (16, 16, 16))
    assert pin_size_ranges(32) == ((10, 6, 3), (32, 32, 32))


def test_constraints_on_thousands_of_draws():
    # A 16 x 16 px background: one pixel per cell, so thousands of compositions stay fast.
    rng = np.random.default_rng(123)
    background = Image.new("RGB", (G, G))
    s_min, s_max, o_max = (5, 3, 2), (16, 16, 16), 0.5
    draws = fallbacks = placed_after_first = 0
    longer_sizes_single = set()
    for _ in range(3000):
        k = int(rng.integers(1, 4))
        ratios = np.exp(rng.uniform(-np.log(2.5), np.log(2.5), size=k))
        objs = [
            (f"o{i}", _solid(max(1, round(40 * min(r, 1))), max(1, round(40 / max(r, 1)))))
            for i, r in enumerate(ratios)
        ]
        image, placed = compose(background, objs, rng)
        draws += 1
        assert image.size == (G, G)
        assert len(placed) == k <= 3
        boxes = []
        for (name, obj), p in zip(objs, placed):
            assert p.name == name
            gx1, gy1, gx2, gy2 = p.grid_box
            # Fully inside the image, pixel box = grid box in cells (cell = 1 px here).
            assert 0 <= gx1 <= gx2 <= G - 1 and 0 <= gy1 <= gy2 <= G - 1
            assert p.box == (gx1, gy1, gx2 + 1, gy2 + 1)
            ratio = obj.size[0] / obj.size[1]
            sx, sy = gx2 - gx1, gy2 - gy1
            longer, other = (sx, sy) if ratio >= 1 else (sy, sx)
            if p.fallback:
                fallbacks += 1
                assert longer == s_min[k - 1]
            else:
                assert s_min[k - 1] <= longer <= s_max[k - 1] - 1
            assert other == _expected_other_side(longer, ratio)
            if boxes and not p.fallback:
                placed_after_first += 1
                total = sum(_overlap_ratio_cells(p.grid_box, b) for b in boxes)
                assert total <= o_max + 1e-12, (p.grid_box, boxes, total)
            if k == 1:
                longer_sizes_single.add(longer)
            boxes.append(p.grid_box)
    # Longer side is randint(s_min, s_max - 1): with one object every size 5..15 occurs.
    assert longer_sizes_single == set(range(5, 16))
    assert placed_after_first > 1000
    rate = fallbacks / draws
    print(f"fallback rate: {fallbacks} fallback objects in {draws} compositions ({rate:.4f} per composition)")
    assert rate < 0.05


def test_first_object_position_is_uniform_over_inside_positions():
    rng = np.random.default_rng(0)
    background = Image.new("RGB", (G, G))
    starts = set()
    for _ in range(600):
        # Square object, s_min = s_max - 1 = 12: always 12 -> 13 cells, start in 0..3.
        _, (p,) = compose(background, [("sq", _solid(8, 8))], rng, s_min=(12, 3, 2), s_max=(13, 16, 16))
        assert p.grid_box[2] - p.grid_box[0] == 12
        starts.add((p.grid_box[0], p.grid_box[1]))
    assert starts == {(x, y) for x in range(4) for y in range(4)}


def test_overlap_sum_hand_computed():
    # 4-cell grid, existing 2x2 box at the origin; new 2x2 box (size 1 -> 2 cells), positions 0..2.
    total = overlap_sum((1, 1), 4, [(0, 0, 1, 1)])
    expected = np.array(
        [
            [1.0, 0.5, 0.0],  # y = 0: inter 4, 2, 0 of area 4
            [0.5, 0.25, 0.0],
            [0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(total, expected)
    # Max over the two boxes: a 1-cell new box inside a 2x2 box -> inter 1, ratios 1/4 and 1/1 -> 1.
    assert overlap_sum((0, 0), 4, [(0, 0, 1, 1)])[0, 0] == 1.0
    # Summed over boxes: two existing 1x2 boxes each covering half of the new 2x2 box: per box
    # inter 2 -> max(2/2, 2/4) = 1, summed 2. At x = 1 (cells 1-2) only the second one overlaps, fully
    # (inter 2 -> 1); at y = 1 (rows 1-2) each overlaps in one cell: 2 * max(1/2, 1/4) = 1.
    total = overlap_sum((1, 1), 4, [(0, 0, 0, 1), (1, 0, 1, 1)])
    assert total[0, 0] == 2.0 and total[0, 1] == 1.0 and total[0, 2] == 0.0 and total[1, 0] == 1.0


def test_pixels_are_pasted_inside_the_box_only():
    rng = np.random.default_rng(5)
    background = Image.new("RGB", (112, 112), (0, 0, 0))
    image, (p,) = compose(background, [("red", _solid(30, 20))], rng)
    arr = np.asarray(image)
    x1, y1, x2, y2 = p.box
    assert (x2 - x1) % 7 == 0 and (y2 - y1) % 7 == 0
    assert (arr[y1:y2, x1:x2] == (255, 0, 0)).all()
    mask = np.ones(arr.shape[:2], bool)
    mask[y1:y2, x1:x2] = False
    assert (arr[mask] == 0).all()
    # The background itself is never modified.
    assert np.asarray(background).max() == 0


def test_transparent_pixels_keep_the_background():
    rng = np.random.default_rng(1)
    obj = Image.new("RGBA", (20, 20), (255, 255, 255, 0))
    obj.paste((255, 255, 255, 255), (0, 0, 20, 10))  # only the top half is opaque
    image, (p,) = compose(Image.new("RGB", (16, 16)), [("half", obj)], rng, s_min=(15, 3, 2))
    arr = np.asarray(image)
    assert p.grid_box == (0, 0, 15, 15)
    # Away from the edge (resampling blurs the rows next to it): opaque half pasted, transparent half not.
    assert (arr[:6] == 255).all() and (arr[10:] == 0).all()


def test_fallback_path_is_taken_when_nothing_fits():
    # One object fills the whole image, o_max = 0: no position for the second one -> fallback to the
    # minimum size (2 cells longer side -> 3 cells) at a random position, violating o_max by design.
    rng = np.random.default_rng(0)
    objs = [("big", _solid(10, 10)), ("small", _solid(10, 10))]
    _, (a, b) = compose(Image.new("RGB", (G, G)), objs, rng, s_min=(5, 15, 2), s_max=(16, 16, 16), o_max=0.0)
    assert not a.fallback and a.grid_box == (0, 0, 15, 15)
    assert b.fallback
    assert b.grid_box[2] - b.grid_box[0] == 15  # s_min for 2 objects = 15 -> fallback size 15
    # With room to spare, nothing falls back.
    _, placed = compose(Image.new("RGB", (G, G)), objs, rng, s_min=(5, 3, 2), s_max=(16, 4, 16), o_max=0.0)
    assert not any(p.fallback for p in placed)


def test_determinism_same_rng_same_result():
    objs = [("a", _solid(9, 5)), ("b", _solid(5, 9)), ("c", _solid(7, 7))]
    bg = Image.new("RGB", (112, 112), (10, 20, 30))
    img1, p1 = compose(bg, objs, np.random.default_rng(7))
    img2, p2 = compose(bg, objs, np.random.default_rng(7))
    assert p1 == p2 and img1.tobytes() == img2.tobytes()


@pytest.mark.parametrize(
    "kwargs, objects, size, match",
    [
        ({"s_min": (5, 17, 2), "s_max": (16, 16, 16)}, 1, 112, r"s_min\[1\]=17 > s_max\[1\]"),
        ({"s_min": (5, 3, 16), "s_max": (16, 16, 16)}, 1, 112, r"s_min\[2\]=16 > s_max\[2\] - 1"),
        ({"s_min": (0, 3, 2)}, 1, 112, r"s_min\[0\]=0 .* must be >= 1"),
        ({"s_max": (17, 16, 16)}, 1, 112, r"s_max\[0\]=17 .* grid_size=16"),
        ({"s_min": (5, 3)}, 1, 112, r"s_min and s_max need one size per object count"),
        ({"a_max": 2}, 3, 112, r"got 3 objects but a_max=2"),
        ({}, 1, 100, r"not divisible by grid_size=16"),
        ({"o_max": -0.1}, 1, 112, r"o_max"),
        ({"max_tries": 0}, 1, 112, r"max_tries"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(kwargs, objects, size, match):
    objs = [(f"o{i}", _solid(5, 5)) for i in range(objects)]
    with pytest.raises(ValueError, match=match):
        compose(Image.new("RGB", (size, size)), objs, np.random.default_rng(0), **kwargs)


def test_non_rgba_object_is_rejected_with_its_name():
    with pytest.raises(ValueError, match=r"objects\[0\] \('cat'\) must be an RGBA PIL image.*RGB"):
        compose(Image.new("RGB", (112, 112)), [("cat", Image.new("RGB", (5, 5)))], np.random.default_rng(0))
