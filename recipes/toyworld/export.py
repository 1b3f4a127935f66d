"""Exports of toy-world scenes in the formats real data comes in, so real-data loaders see the same bytes.

* ``to_hf_dataset``: a ``datasets.Dataset`` with an ``Image`` column "image", "scene_index" and the task's
  columns (one row per scene; texts drawn with ``world.text_rng(index)``, so exports are deterministic):

  ===========  ===========================================================================================
  task         columns
  ===========  ===========================================================================================
  caption      caption: str
  vqa          questions, answers, kinds: list[str]
  referring    expressions: list[str], object_indices: list[int], boxes: list[[x1, y1, x2, y2]] (referent)
  detection    objects: {category: list[str], bbox: list[[x, y, w, h]], area: list[float]} (HF detection style)
  pin          names: list[str], boxes: list[[x1, y1, x2, y2]] px, grid_boxes: list[[gx1, gy1, gx2, gy2]]
  grounded     caption: str, phrase_spans: list[[start, end]], phrase_boxes: list[[x1, y1, x2, y2]]
  region       regions: list[str] (region captions), boxes: list[[x1, y1, x2, y2]]
  ===========  ===========================================================================================

* ``to_coco``: COCO "instances" json + ``images/`` folder of PNGs (boxes xywh, area = box area, iscrowd 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from . import texts
from .world import ToyWorld

if TYPE_CHECKING:
    import datasets

TASKS: tuple[str, ...] = ("caption", "vqa", "referring", "detection", "pin", "grounded", "region")


def _task_features(task: str) -> dict:
    """The task's column features (``datasets`` is imported here: it costs ~1 s, only exports need it)."""
    import datasets

    box = datasets.Sequence(datasets.Value("int32"), length=4)
    strings = datasets.Sequence(datasets.Value("string"))
    return {
        "caption": {"caption": datasets.Value("string")},
        "vqa": {"questions": strings, "answers": strings, "kinds": strings},
        "referring": {
            "expressions": strings,
            "object_indices": datasets.Sequence(datasets.Value("int32")),
            "boxes": datasets.Sequence(box),
        },
        "detection": {
            "objects": {
                "category": strings,
                "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                "area": datasets.Sequence(datasets.Value("float32")),
            }
        },
        "pin": {"names": strings, "boxes": datasets.Sequence(box), "grid_boxes": datasets.Sequence(box)},
        "grounded": {
            "caption": datasets.Value("string"),
            "phrase_spans": datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=2)),
            "phrase_boxes": datasets.Sequence(box),
        },
        "region": {"regions": strings, "boxes": datasets.Sequence(box)},
    }[task]


def _task_row(world: ToyWorld, scene, task: str) -> dict:
    rng = world.text_rng(scene.index)
    if task == "caption":
        return {"caption": texts.caption(scene, rng)}
    if task == "vqa":
        # Absent-shape count questions ask only about shapes of this split (held-out never leaks in).
        shapes = [world.objects.attributes(c)["shape"] for c in world.categories]
        qa = texts.vqa(scene, rng, all_shapes=tuple(dict.fromkeys(s for s in shapes if s is not None)))
        return {"questions": [q for q, _, _ in qa], "answers": [a for _, a, _ in qa], "kinds": [k for _, _, k in qa]}
    if task == "referring":
        refs = texts.referring(scene, rng)
        return {
            "expressions": [e for e, _ in refs],
            "object_indices": [i for _, i in refs],
            "boxes": [list(scene.objects[i].box) for _, i in refs],
        }
    if task == "detection":
        anns = texts.detection(scene)
        return {
            "objects": {
                "category": [a["category"] for a in anns],
                "bbox": [[float(v) for v in a["bbox_xywh"]] for a in anns],
                "area": [float(a["bbox_xywh"][2] * a["bbox_xywh"][3]) for a in anns],
            }
        }
    if task == "pin":
        queries = texts.pin_queries(scene)
        return {
            "names": [q["name"] for q in queries],
            "boxes": [q["box"] for q in queries],
            "grid_boxes": [q["grid_box"] for q in queries],
        }
    if task == "grounded":
        text, spans = texts.grounded_caption(scene, rng)
        return {
            "caption": text,
            "phrase_spans": [[s, e] for s, e, _ in spans],
            "phrase_boxes": [list(boxes[0]) for _, _, boxes in spans],
        }
    # region
    return {
        "regions": [texts.region_caption(o) for o in scene.objects],
        "boxes": [list(o.box) for o in scene.objects],
    }


def to_hf_dataset(world: ToyWorld, indices, task: str = "caption") -> datasets.Dataset:
    """Scenes ``indices`` of ``world`` as a ``datasets.Dataset`` for ``task`` (columns: module docstring)."""
    import datasets

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {list(TASKS)}")
    indices = [int(i) for i in indices]
    features = datasets.Features(
        {"image": datasets.Image(), "scene_index": datasets.Value("int64"), **_task_features(task)}
    )
    columns: dict[str, list] = {name: [] for name in features}
    for index in indices:
        scene = world.scene(index)
        row = {"image": scene.image, "scene_index": index, **_task_row(world, scene, task)}
        for name in features:
            columns[name].append(row[name])
    return datasets.Dataset.from_dict(columns, features=features)


def to_coco(world: ToyWorld, indices, out_dir: str | Path) -> Path:
    """Write scenes ``indices`` as COCO instances: ``out_dir/images/<index>.png`` + the returned json path.

    Image ids are ``scene index + 1`` (id 0 is falsy in some COCO tools), category ids ``1..C`` over
    ``world.categories`` (sorted order of the world), annotation ids ``1..N``; bbox is [x, y, w, h] in
    pixels, area the box area (toy objects have no polygon masks), iscrowd 0.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    category_ids = {name: i + 1 for i, name in enumerate(world.categories)}
    categories = []
    for name, cid in category_ids.items():
        attrs = world.objects.attributes(name)
        categories.append({"id": cid, "name": name, "supercategory": attrs.get("shape") or "object"})
    images, annotations = [], []
    for index in (int(i) for i in indices):
        scene = world.scene(index)
        file_name = f"{index:08d}.png"
        scene.image.save(image_dir / file_name)
        width, height = scene.size
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for ann in texts.detection(scene):
            x, y, w, h = ann["bbox_xywh"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[ann["category"]],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    info = {"description": f"groundvlm toy world: {world!r}", "version": "1.0"}
    path = out_dir / f"instances_{world.split}.json"
    coco = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(coco))
    return path
