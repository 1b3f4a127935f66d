"""ToyWorld scenes: category split, held-out isolation, determinism by seed, scene/box consistency."""

import numpy as np
import pytest
from groundvlm.recipes.toyworld import (
    COLOURS,
    DEFAULT_SPLIT,
    SHAPES,
    TEXTURES,
    CategorySplit,
    ProceduralObjects,
    ToyWorld,
    category_name,
    to_hf_dataset,
)


def _fast_world(**kwargs):
    # Small renders keep thousands of scenes within a few seconds; the logic is the same at any size.
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("objects", ProceduralObjects(resolution=8))
    return ToyWorld(**kwargs)


def test_catalogue_sizes():
    assert len(SHAPES) >= 10 and len(set(SHAPES)) == len(SHAPES)
    assert len(COLOURS) >= 8
    assert {"plain", "striped", "dotted", "checkered"} <= set(TEXTURES)
    assert category_name("red", "star") == "red star"
    with pytest.raises(ValueError, match="unknown colour 'mauve'"):
        category_name("mauve", "star")


def test_default_split_is_the_documented_one():
    colours = list(COLOURS)
    held_out = {f"{c} {s}" for c in colours for s in ("heart", "moon")}
    validation = {
        "red circle",
        "orange square",
        "yellow triangle",
        "green star",
        "blue ring",
        "purple diamond",
        "pink hexagon",
        "white cross",
    }
    assert set(DEFAULT_SPLIT.held_out) == held_out and len(DEFAULT_SPLIT.held_out) == 16
    assert set(DEFAULT_SPLIT.validation) == validation
    everything = {f"{c} {s}" for c in colours for s in SHAPES}
    assert set(DEFAULT_SPLIT.train) == everything - held_out - validation
    assert len(DEFAULT_SPLIT.train) == len(everything) - 24
    assert not any(n.endswith(("heart", "moon")) for n in DEFAULT_SPLIT.train + DEFAULT_SPLIT.validation)


def test_category_split_rejects_overlap():
    with pytest.raises(ValueError, match="train and .held_out share categories"):
        CategorySplit(train=["red star"], validation=[], held_out=["red star"])


def test_held_out_never_appears_in_train_scenes():
    world = _fast_world(seed=3, split="train")
    held_out = set(DEFAULT_SPLIT.held_out)
    seen = set()
    objects = fallbacks = 0
    for i in range(2500):
        for o in world.scene(i).objects:
            assert o.name not in held_out and o.shape not in ("heart", "moon")
            seen.add(o.name)
            objects += 1
            fallbacks += o.fallback
    # C's fallback (minimum size, may break o_max) is rare: ~2% of objects with PIN's settings.
    assert 0 < fallbacks < 0.05 * objects
    # Every train category shows up, and nothing outside the train list.
    assert seen == set(DEFAULT_SPLIT.train)


@pytest.mark.parametrize("split", ["validation", "held_out"])
def test_other_splits_contain_only_their_categories(split):
    world = _fast_world(seed=1, split=split)
    allowed = set(getattr(DEFAULT_SPLIT, split))
    assert set(world.categories) == allowed
    for i in range(300):
        assert {o.name for o in world.scene(i).objects} <= allowed


def test_held_out_never_in_pin_export_of_train():
    world = _fast_world(seed=0, split="train")
    ds = to_hf_dataset(world, range(300), task="pin")
    names = {n for row in ds["names"] for n in row}
    assert names and not names & set(DEFAULT_SPLIT.held_out)


def test_determinism_by_seed():
    a, b, c = ToyWorld(seed=11), ToyWorld(seed=11), ToyWorld(seed=12)
    for i in (0, 1, 57):
        sa, sb, sc = a.scene(i), b.scene(i), c.scene(i)
        assert sa.image.tobytes() == sb.image.tobytes()
        assert sa.objects == sb.objects
        assert sa.image.tobytes() != sc.image.tobytes()
    # Order of access does not matter: a scene depends only on (seed, split, index).
    assert a.scene(5).image.tobytes() == ToyWorld(seed=11).scene(5).image.tobytes()
    assert a.scene(5).image.tobytes() != a.scene(6).image.tobytes()
    # The split is part of the seed: index 0 of validation differs from index 0 of train.
    assert ToyWorld(seed=11, split="validation").scene(0).image.tobytes() != a.scene(0).image.tobytes()


def test_scene_objects_are_consistent():
    world = ToyWorld(seed=2, image_size=112)
    counts = set()
    for i in range(60):
        scene = world.scene(i)
        assert scene.image.mode == "RGB" and scene.image.size == (112, 112)
        assert 1 <= len(scene.objects) <= 3
        counts.add(len(scene.objects))
        assert len({o.name for o in scene.objects}) == len(scene.objects)  # distinct categories
        for o in scene.objects:
            assert o.name == f"{o.colour} {o.shape}"
            assert o.texture in TEXTURES
            gx1, gy1, gx2, gy2 = o.grid_box
            assert o.box == (7 * gx1, 7 * gy1, 7 * (gx2 + 1), 7 * (gy2 + 1))
    assert counts == {1, 2, 3}


def test_pasted_object_colour_is_visible_in_its_box():
    # A plain object on its box: the most common colour in the box centre is (close to) the object's.
    world = ToyWorld(seed=4, objects=ProceduralObjects(textures=("plain",)), num_objects=(1, 1))
    scene = world.scene(0)
    (o,) = scene.objects
    arr = np.asarray(scene.image).astype(int)
    cx, cy = (o.box[0] + o.box[2]) // 2, (o.box[1] + o.box[3]) // 2
    if o.shape in ("ring", "moon"):  # hollow in the centre; look at the whole box instead
        pixels = arr[o.box[1] : o.box[3], o.box[0] : o.box[2]].reshape(-1, 3)
    else:
        pixels = arr[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3)
    dist = np.abs(pixels - np.array(COLOURS[o.colour])).max(axis=1)
    assert (dist < 50).mean() > 0.3


def test_bad_world_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        ToyWorld(split="test")
    with pytest.raises(ValueError, match="image_size=100 must be divisible by grid_size=16"):
        ToyWorld(image_size=100)
    with pytest.raises(ValueError, match="num_objects"):
        ToyWorld(num_objects=(0, 3))
    with pytest.raises(ValueError, match="scene index must be >= 0"):
        ToyWorld().scene(-1)
