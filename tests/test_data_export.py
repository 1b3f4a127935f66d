"""Exports: datasets.Dataset with an Image column per task, COCO json round trip through pycocotools."""

import json

import datasets
import numpy as np
import pytest
from groundvlm.recipes.toyworld import TASKS, ProceduralObjects, ToyWorld, to_coco, to_hf_dataset
from PIL import Image
from pycocotools.coco import COCO


@pytest.fixture(scope="module")
def world():
    return ToyWorld(seed=5, image_size=64, objects=ProceduralObjects(resolution=24))


@pytest.mark.parametrize("task", TASKS)
def test_hf_dataset_has_image_column_and_task_columns(world, task):
    ds = to_hf_dataset(world, [0, 3, 4], task=task)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 3
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds["scene_index"] == [0, 3, 4]
    row = ds[1]
    scene = world.scene(3)
    assert isinstance(row["image"], Image.Image)
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(scene.image))
    boxes = [list(o.box) for o in scene.objects]
    names = [o.name for o in scene.objects]
    if task == "pin":
        assert row["names"] == names and row["boxes"] == boxes
        assert row["grid_boxes"] == [list(o.grid_box) for o in scene.objects]
    elif task == "detection":
        assert row["objects"]["category"] == names
        assert row["objects"]["bbox"] == [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]
        assert row["objects"]["area"] == [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    elif task == "caption":
        assert all(n in row["caption"] for n in names)
    elif task == "vqa":
        assert row["questions"][0] == "How many objects are there?" and row["answers"][0] == str(len(names))
        assert len(row["questions"]) == len(row["answers"]) == len(row["kinds"])
    elif task == "referring":
        assert [boxes[i] for i in row["object_indices"]] == row["boxes"]
    elif task == "grounded":
        assert sorted(row["caption"][s:e] for s, e in row["phrase_spans"]) == sorted(
            f"{'an' if d[0] in 'aeiou' else 'a'} {d}"
            for d in ((f"{o.texture} " if o.texture != "plain" else "") + o.name for o in scene.objects)
        )
    elif task == "region":
        assert row["boxes"] == boxes and len(row["regions"]) == len(names)


def test_hf_dataset_is_deterministic(world):
    a = to_hf_dataset(world, range(4), task="referring")
    b = to_hf_dataset(world, range(4), task="referring")
    assert a["expressions"] == b["expressions"] and a["boxes"] == b["boxes"]


def test_unknown_task(world):
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        to_hf_dataset(world, [0], task="segmentation")


def test_coco_export_round_trips_through_pycocotools(world, tmp_path):
    indices = [0, 1, 2, 7]
    path = to_coco(world, indices, tmp_path / "coco")
    raw = json.loads(path.read_text())
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [i + 1 for i in indices]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == world.categories
    name_of = {c["id"]: c["name"] for c in raw["categories"]}
    for index in indices:
        scene = world.scene(index)
        (img,) = coco.loadImgs([index + 1])
        assert (img["width"], img["height"]) == scene.size
        on_disk = Image.open(tmp_path / "coco" / "images" / img["file_name"])
        assert np.array_equal(np.asarray(on_disk.convert("RGB")), np.asarray(scene.image))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
        assert [name_of[a["category_id"]] for a in anns] == [o.name for o in scene.objects]
        for a, o in zip(anns, scene.objects):
            x1, y1, x2, y2 = o.box
            assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert a["area"] == (x2 - x1) * (y2 - y1)
            assert a["iscrowd"] == 0
    assert sorted(a["id"] for a in raw["annotations"]) == list(range(1, len(raw["annotations"]) + 1))
