"""Object and background sources: procedural rendering, X-Paste / BG-20k style folders, clear errors."""

import json

import numpy as np
import pytest
from groundvlm.recipes.toyworld import (
    BACKGROUND_KINDS,
    SHAPES,
    FolderBackgrounds,
    FolderObjects,
    ProceduralBackgrounds,
    ProceduralObjects,
    ToyWorld,
)
from PIL import Image


def _cutout(path, size=(12, 8), colour=(0, 200, 0)):
    im = Image.new("RGBA", (size[0] + 4, size[1] + 4), (0, 0, 0, 0))
    im.paste((*colour, 255), (2, 2, 2 + size[0], 2 + size[1]))
    im.save(path)


@pytest.fixture
def pool(tmp_path):
    root = tmp_path / "pool"
    for name, colour in (("apple", (200, 0, 0)), ("kiwi", (0, 200, 0))):
        (root / name).mkdir(parents=True)
        for k in range(2):
            _cutout(root / name / f"{k}.png", size=(12 + 4 * k, 8), colour=colour)
    return root


@pytest.fixture
def bg_folder(tmp_path):
    root = tmp_path / "bg" / "sub"
    root.mkdir(parents=True)
    Image.new("RGB", (50, 30), (10, 20, 30)).save(root / "a.jpg")
    Image.new("RGB", (20, 40), (40, 50, 60)).save(root / "b.png")
    return tmp_path / "bg"


def test_procedural_objects_every_category_renders_tight_rgba():
    objects = ProceduralObjects()
    rng = np.random.default_rng(0)
    assert len(objects.categories) == 80
    for category in objects.categories:
        inst = objects.sample_instance(category, rng)
        im = inst.image
        assert im.mode == "RGBA"
        alpha = np.asarray(im)[..., 3]
        # Cropped tight: every border row/column touches the object.
        assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()
        colour, shape = category.split(" ")
        assert inst.attributes == {"colour": colour, "shape": shape, "texture": inst.attributes["texture"]}
        assert objects.attributes(category) == {"colour": colour, "shape": shape}


def test_procedural_objects_vary_in_aspect_and_texture():
    objects = ProceduralObjects()
    rng = np.random.default_rng(1)
    insts = [objects.sample_instance("blue square", rng) for _ in range(40)]
    ratios = {round(i.image.size[0] / i.image.size[1], 2) for i in insts}
    assert len(ratios) > 10
    assert {i.attributes["texture"] for i in insts} == {"plain", "striped", "dotted", "checkered"}
    # A plain square fills its whole box with alpha 255 (alpha = mask).
    plain = ProceduralObjects(textures=("plain",)).sample("blue square", rng)
    assert (np.asarray(plain)[..., 3] == 255).all()


def test_shapes_are_distinct_masks():
    objects = ProceduralObjects(textures=("plain",), max_aspect=1.0)
    masks = {}
    for shape in SHAPES:
        im = objects.sample(f"red {shape}", np.random.default_rng(0)).resize((32, 32))
        masks[shape] = np.asarray(im)[..., 3] > 127
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] != masks[b]).mean() > 0.03, (a, b)


def test_procedural_objects_unknown_category():
    with pytest.raises(ValueError, match="unknown category 'blue dragon'"):
        ProceduralObjects().sample("blue dragon", np.random.default_rng(0))


@pytest.mark.parametrize("size", [(112, 112), (37, 23), (224, 160)])
def test_procedural_backgrounds_any_resolution_every_kind(size):
    rng = np.random.default_rng(0)
    for kind in BACKGROUND_KINDS:
        im = ProceduralBackgrounds(kinds=(kind,)).sample(rng, size=size)
        assert im.mode == "RGB" and im.size == size
        assert np.asarray(im).std() > 0 or kind == "flat"


def test_procedural_backgrounds_deterministic_and_varied():
    bgs = ProceduralBackgrounds()
    a = bgs.sample(np.random.default_rng(3), size=(64, 64))
    b = bgs.sample(np.random.default_rng(3), size=(64, 64))
    c = bgs.sample(np.random.default_rng(4), size=(64, 64))
    assert a.tobytes() == b.tobytes() != c.tobytes()
    with pytest.raises(ValueError, match="unknown background kinds"):
        ProceduralBackgrounds(kinds=("lava",))


def test_folder_objects_from_folders(pool):
    objects = FolderObjects(pool)
    assert objects.categories == ["apple", "kiwi"]
    assert objects.attributes("kiwi") == {"colour": None, "shape": None}
    rng = np.random.default_rng(0)
    sizes = {objects.sample("apple", rng).size for _ in range(20)}
    # Cropped tight to alpha: the 2-px transparent margin is gone.
    assert sizes == {(12, 8), (16, 8)}
    assert objects.sample_instance("kiwi", rng).attributes == {"colour": None, "shape": None, "texture": None}


def test_folder_objects_from_json_index(pool, tmp_path):
    index = {"apple": ["pool/apple/0.png"], "kiwi": ["pool/kiwi/1.png", "pool/kiwi/0.png"]}
    path = tmp_path / "instance_pool.json"
    path.write_text(json.dumps(index))
    objects = FolderObjects(path)
    assert objects.categories == ["apple", "kiwi"]
    im = objects.sample("apple", np.random.default_rng(0))
    assert im.mode == "RGBA" and im.size == (12, 8)
    assert np.asarray(im)[0, 0, :3].tolist() == [200, 0, 0]


def test_world_with_folder_sources(pool, bg_folder):
    world = ToyWorld(seed=0, split="all", objects=FolderObjects(pool), backgrounds=FolderBackgrounds(bg_folder))
    assert world.categories == ["apple", "kiwi"]
    scene = world.scene(0)
    assert scene.image.size == (112, 112)
    for o in scene.objects:
        assert o.name in ("apple", "kiwi") and o.colour is None and o.shape is None and o.texture is None
    # A category split of the folder's own names works too.
    from groundvlm.recipes.toyworld import CategorySplit

    split = CategorySplit(train=["apple"], validation=[], held_out=["kiwi"])
    train = ToyWorld(split="train", objects=FolderObjects(pool), category_split=split)
    assert {o.name for i in range(30) for o in train.scene(i).objects} == {"apple"}
    # The default toy split has none of the folder's names: a clear error says what to do.
    with pytest.raises(ValueError, match="split 'train' has no categories .* split='all'"):
        ToyWorld(objects=FolderObjects(pool))


def test_folder_backgrounds_squash_to_size(bg_folder):
    bgs = FolderBackgrounds(bg_folder)
    assert [p.name for p in bgs.files] == ["a.jpg", "b.png"]
    rng = np.random.default_rng(0)
    ims = [bgs.sample(rng, size=(64, 48)) for _ in range(10)]
    assert all(im.size == (64, 48) and im.mode == "RGB" for im in ims)
    # Both images are drawn (the seeded draw is fixed), each squashed whole: solid colours stay exact.
    assert {im.getpixel((5, 5)) for im in ims} == {(40, 50, 60), (10, 20, 30)}


def test_folder_objects_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        FolderObjects(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"object pool {empty} is empty"):
        FolderObjects(empty)
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"category folder .*cat has no \.png files"):
        FolderObjects(empty)


def test_folder_objects_bad_images(tmp_path):
    root = tmp_path / "pool"
    (root / "cat").mkdir(parents=True)
    bad = root / "cat" / "broken.png"
    bad.write_bytes(b"this is not a png")
    objects = FolderObjects(root)
    with pytest.raises(ValueError, match=r"cannot read object image .*broken\.png"):
        objects.sample("cat", np.random.default_rng(0))
    bad.unlink()
    rgb = root / "cat" / "rgb.png"
    Image.new("RGB", (8, 8)).save(rgb)
    with pytest.raises(ValueError, match=r"object image .*rgb\.png has mode 'RGB'.*must be RGBA"):
        FolderObjects(root).sample("cat", np.random.default_rng(0))
    rgb.unlink()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(root / "cat" / "clear.png")
    with pytest.raises(ValueError, match=r"clear\.png is fully transparent"):
        FolderObjects(root).sample("cat", np.random.default_rng(0))


def test_folder_objects_bad_index(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"cat": ["missing.png"]}))
    with pytest.raises(ValueError, match=r"missing files for 'cat'"):
        FolderObjects(path)
    path.write_text(json.dumps({"cat": []}))
    with pytest.raises(ValueError, match=r"category 'cat' has no png paths"):
        FolderObjects(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read object pool index"):
        FolderObjects(path)


def test_folder_backgrounds_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist or is not a folder"):
        FolderBackgrounds(tmp_path / "nope")
    (tmp_path / "bg").mkdir()
    (tmp_path / "bg" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="has no images"):
        FolderBackgrounds(tmp_path / "bg")
    (tmp_path / "bg" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"cannot read background image .*broken\.jpg"):
        FolderBackgrounds(tmp_path / "bg").sample(np.random.default_rng(0), size=(16, 16))
