"""PIN's real evaluation loaders on tiny fixtures written in the real formats (VOC xml, COCO / LVIS json,
RefCOCO refs pickle / json + instances.json), the <= 3 objects filter, S×S box scaling by hand, errors, and the
recipe's `--eval_format coco` path through pin.py main()."""

import json
import pickle
from collections import OrderedDict
from types import SimpleNamespace as NS

import numpy as np
import pytest
from PIL import Image
from transformers import Blip2Processor, BlipImageProcessor

from groundvlm.recipes import pin as pin_recipe
from groundvlm.recipes.systems.pin.loaders import (
    load_coco,
    load_eval_samples,
    load_lvis,
    load_refcoco,
    load_voc,
    referring_precision,
    squash_box,
)
from tests._pin_tiny import make_tokenizer
from tests.pin.test_pin_recipe import HELD, TRAIN, S, SquareWorld, tiny_base


def _jpeg(path, width, height, colour=(120, 60, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path, quality=95)


def _boxes(samples):
    return [(s.name, s.box) for s in samples]


# ---------------------------------------------------------------------------------------------- fixtures

_VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{id}.jpg</filename>
\t<source><database>The VOC2007 Database</database><annotation>PASCAL VOC2007</annotation></source>
\t<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
_VOC_OBJECT = """\t<object>
\t\t<name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{difficult}</difficult>
\t\t<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>
\t</object>
"""


def write_voc(root):
    """VOC2007 layout: 000001 (224x112, a dog and a difficult person), 000002 (4 objects: filtered out),
    000003 (56x56, one diningtable); 000004 exists but is not in test.txt."""
    images = {
        "000001": (224, 112, [("dog", 0, (12, 23, 112, 100)), ("person", 1, (1, 1, 224, 112))]),
        "000002": (100, 100, [("cat", 0, (1, 1, 50, 50))] * 4),
        "000003": (56, 56, [("diningtable", 0, (1, 1, 28, 56))]),
        "000004": (100, 100, [("bird", 0, (1, 1, 50, 50))]),
    }
    for image_id, (w, h, objects) in images.items():
        xml = _VOC_XML.format(
            id=image_id, w=w, h=h, objects="".join(_VOC_OBJECT.format(name=n, difficult=d, b=b) for n, d, b in objects)
        )
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        _jpeg(root / "JPEGImages" / f"{image_id}.jpg", w, h)
    # 000001: left half red, right half blue (checks the squash of the image itself)
    half = np.zeros((112, 224, 3), np.uint8)
    half[:, :112] = (255, 0, 0)
    half[:, 112:] = (0, 0, 255)
    Image.fromarray(half).save(root / "JPEGImages" / "000001.jpg", quality=95)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n000002\n000003\n")
    return root


def write_coco(tmp_path):
    """instances_val2017.json + val2017/: image 139 (320x160, 3 annotations incl. a crowd one), 285 (4: filtered
    out), 632 (none: dropped), 724 (200x400, a dog and a zero-width person)."""
    images = [(724, 200, 400), (139, 320, 160), (285, 100, 100), (632, 100, 100)]
    anns = [
        (139, 1, [32, 16, 64, 48], 0),
        (139, 62, [0, 0, 320, 160], 1),
        (139, 18, [160, 80, 200, 100], 0),
        (724, 18, [50, 100, 100, 200], 0),
        (724, 1, [10, 10, 0, 5], 0),
    ]  # (image, category, xywh, iscrowd)
    anns += [(285, 1, [0, 0, 10, 10], 0)] * 4
    data = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "BY-NC-SA"}],
        "images": [
            {
                "license": 1,
                "file_name": f"{i:012d}.jpg",
                "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
                "height": h,
                "width": w,
                "date_captured": "2013-11-14 17:02:52",
                "id": i,
            }
            for i, w, h in images
        ],
        "annotations": [
            {
                "segmentation": [[0, 0, 1, 0, 1, 1]],
                "area": b[2] * b[3],
                "iscrowd": c,
                "image_id": i,
                "bbox": b,
                "category_id": k,
                "id": n + 1,
            }
            for n, (i, k, b, c) in enumerate(anns)
        ],
        "categories": [
            {"supercategory": "person", "id": 1, "name": "person"},
            {"supercategory": "animal", "id": 18, "name": "dog"},
            {"supercategory": "furniture", "id": 62, "name": "chair"},
        ],
    }
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    for i, w, h in images:
        _jpeg(tmp_path / "val2017" / f"{i:012d}.jpg", w, h)
    return path, tmp_path / "val2017"


# Hand-computed at S = 112. Image 139: sx = 112/320 = 0.35, sy = 112/160 = 0.7; the dog [160,80,360,180]
# is clipped to the image. Image 724: sx = 0.56, sy = 0.28; its zero-width person is not prompted.
COCO_EXPECTED = [
    ("person", [11.2, 11.2, 33.6, 44.8]),
    ("chair", [0, 0, 112, 112]),
    ("dog", [56, 56, 112, 112]),
    ("dog", [28, 28, 84, 84]),
]


def write_lvis(tmp_path):
    """lvis_v1_val.json (no file_name: coco_url only) + a COCO root: 397133 in val2017/, 9 directly in the root."""
    data = {
        "images": [
            {
                "id": 397133,
                "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg",
                "height": 160,
                "width": 160,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
                "license": 4,
            },
            {
                "id": 9,
                "coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg",
                "height": 40,
                "width": 80,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
                "license": 1,
            },
        ],
        "annotations": [
            {"id": 1, "image_id": 397133, "category_id": 1, "bbox": [16, 32, 48, 64], "area": 3072, "segmentation": []},
            {"id": 2, "image_id": 9, "category_id": 2, "bbox": [8, 4, 40, 20], "area": 800, "segmentation": []},
        ],
        "categories": [
            {
                "id": 1,
                "name": "bow_(weapon)",
                "synonyms": ["bow_(weapon)", "longbow"],
                "synset": "bow.n.04",
                "frequency": "r",
                "def": "a weapon for shooting arrows",
            },
            {
                "id": 2,
                "name": "baseball_bat",
                "synonyms": ["baseball_bat"],
                "synset": "baseball_bat.n.01",
                "frequency": "f",
                "def": "an implement used in baseball",
            },
        ],
    }
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps(data))
    _jpeg(tmp_path / "coco" / "val2017" / "000000397133.jpg", 160, 160)
    _jpeg(tmp_path / "coco" / "000000000009.jpg", 80, 40)
    return path, tmp_path / "coco"


def write_refcoco(tmp_path, pickled=True, as_json=True):
    """refcoco/{refs(unc).p, refs(unc).json, instances.json} + train2014/ images."""
    folder = tmp_path / "refcoco"
    folder.mkdir(exist_ok=True)
    instances = {
        "images": [
            {"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 224, "height": 224},
            {"id": 77, "file_name": "COCO_train2014_000000000077.jpg", "width": 112, "height": 112},
        ],
        "annotations": [
            {"id": 1001, "image_id": 581857, "category_id": 1, "bbox": [20, 40, 100, 60], "iscrowd": 0},
            {"id": 1002, "image_id": 581857, "category_id": 1, "bbox": [120, 0, 100, 224], "iscrowd": 0},
            {"id": 2001, "image_id": 77, "category_id": 3, "bbox": [0, 0, 56, 56], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }
    (folder / "instances.json").write_text(json.dumps(instances))

    def ref(ref_id, image_id, ann_id, split, raws):
        sents = [
            {"tokens": r.split(), "raw": r, "sent_id": 10 * ref_id + k, "sent": r.lower()} for k, r in enumerate(raws)
        ]
        return {
            "sent_ids": [s["sent_id"] for s in sents],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "ann_id": ann_id,
            "ref_id": ref_id,
            "image_id": image_id,
            "split": split,
            "sentences": sents,
            "category_id": 1,
        }

    refs = [
        ref(1, 581857, 1001, "testA", ["man on left", "left guy"]),
        ref(2, 581857, 1002, "testA", ["woman right"]),
        ref(3, 77, 2001, "testB", ["top left car"]),
        ref(4, 77, 2001, "val", ["the car"]),
    ]
    if pickled:
        with open(folder / "refs(unc).p", "wb") as f:
            pickle.dump(refs, f, protocol=2)  # the released file is a Python 2 pickle
    if as_json:
        (folder / "refs(unc).json").write_text(json.dumps(refs))
    _jpeg(tmp_path / "train2014" / "COCO_train2014_000000581857.jpg", 224, 224)
    _jpeg(tmp_path / "train2014" / "COCO_train2014_000000000077.jpg", 112, 112)
    return folder, tmp_path / "train2014"


# ---------------------------------------------------------------------------------------------- loaders


def test_squash_box_by_hand():
    # (height, width) = (160, 320) -> 112: sx = 0.35, sy = 0.7; beyond the image is clipped.
    assert squash_box([32, 16, 96, 64], (160, 320), 112) == pytest.approx([11.2, 11.2, 33.6, 44.8])
    assert squash_box([-5, 80, 360, 180], (160, 320), 112) == pytest.approx([0, 56, 112, 112])


def test_voc_filter_names_difficult_and_scaling(tmp_path):
    samples = load_voc(write_voc(tmp_path / "VOC2007"), 112)
    # 000001: sx = 0.5, sy = 1, VOC's 1-based xmin/ymin minus 1; 000003: sx = sy = 2. 000002 has 4 objects.
    assert [s.name for s in samples] == ["dog", "person", "diningtable"]
    assert [s.image_id for s in samples] == ["000001", "000001", "000003"]
    for s, box in zip(samples, [[5.5, 22, 56, 100], [0, 0, 112, 112], [0, 0, 56, 112]]):
        assert s.box == pytest.approx(box)
    first = samples[0]
    assert first.image is samples[1].image and first.image.size == (112, 112) and first.size_hw == (112, 112)
    assert first.original_size_hw == (112, 224) and first.file_name.endswith("JPEGImages/000001.jpg")
    pixels = np.asarray(first.image)
    assert pixels[50, 20].tolist()[0] > 200 > pixels[50, 20].tolist()[2]  # left half stays red
    assert pixels[50, 90].tolist()[2] > 200 > pixels[50, 90].tolist()[0]  # right half stays blue
    assert first.to_original(first.box) == pytest.approx([11, 22, 112, 100])
    # max_objects = 1 keeps only 000003; max_images keeps the first kept image
    assert _boxes(load_voc(tmp_path / "VOC2007", 112, max_objects=1))[0][0] == "diningtable"
    assert len({s.image_id for s in load_voc(tmp_path / "VOC2007", 112, max_images=1)}) == 1


def test_coco_filter_counts_every_annotation_and_scales(tmp_path):
    annotations, images = write_coco(tmp_path)
    samples = load_coco(annotations, images, 112)
    assert [s.image_id for s in samples] == [139, 139, 139, 724]  # id order; 285 (4 anns) and 632 (none) dropped
    assert [s.name for s in samples] == [n for n, _ in COCO_EXPECTED]
    for s, (_, box) in zip(samples, COCO_EXPECTED):
        assert s.box == pytest.approx(box)
    assert samples[0].original_size_hw == (160, 320)
    assert samples[0].to_original(samples[0].box) == pytest.approx([32, 16, 96, 64])
    assert samples[3].to_original([0, 0, 112, 112]) == pytest.approx([0, 0, 200, 400])
    # max_objects = 2: image 139 has 3 annotations (the crowd one counts), so only 724 remains
    assert [s.image_id for s in load_coco(annotations, images, 112, max_objects=2)] == [724]


def test_lvis_names_and_coco_url_paths(tmp_path):
    annotations, root = write_lvis(tmp_path)
    samples = load_lvis(annotations, root, 112)
    # file order; 397133 from val2017/ (s = 0.7), 9 from the root (sx = 1.4, sy = 2.8)
    assert [(s.image_id, s.name) for s in samples] == [(397133, "bow"), (9, "baseball bat")]
    assert samples[0].box == pytest.approx([11.2, 22.4, 44.8, 67.2])
    assert samples[1].box == pytest.approx([11.2, 11.2, 67.2, 67.2])
    assert samples[0].file_name.endswith("val2017/000000397133.jpg")


def test_refcoco_pickle_is_opt_in_and_json_matches(tmp_path):
    folder, images = write_refcoco(tmp_path, as_json=False)
    with pytest.raises(ValueError, match="loading pickles is opt-in: pass allow_pickle=True"):
        load_refcoco(folder, images, 112)
    from_pickle = load_refcoco(folder / "refs(unc).p", images, 112, allow_pickle=True)
    # s = 0.5: ann 1001 [20,40,120,100] -> [10,20,60,50]; ann 1002 [120,0,220,224] -> [60,0,110,112]
    expected = [("left guy", [10, 20, 60, 50]), ("woman right", [60, 0, 110, 112])]
    assert [s.name for s in from_pickle] == [n for n, _ in expected]
    for s, (_, box) in zip(from_pickle, expected):
        assert s.box == pytest.approx(box)
    write_refcoco(tmp_path, pickled=False)
    from_json = load_refcoco(folder, images, 112)  # the folder resolves to refs(unc).json
    assert _boxes(from_json) == _boxes(from_pickle)
    every = load_refcoco(folder, images, 112, sentences="all")
    assert [s.name for s in every] == ["man on left", "left guy", "woman right"]
    assert [s.name for s in load_refcoco(folder, images, 112, split="testB")] == ["top left car"]
    with pytest.raises(ValueError, match=r"no refs in split 'train'; its splits: \['testA', 'testB', 'val'\]"):
        load_refcoco(folder, images, 112, split="train")


def test_refcoco_pickle_with_code_is_refused_even_when_allowed(tmp_path):
    folder, images = write_refcoco(tmp_path, as_json=False)
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump([OrderedDict(image_id=1)], f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        load_refcoco(folder, images, 112, allow_pickle=True)


def test_referring_precision_at_0_3_by_hand(tmp_path):
    folder, images = write_refcoco(tmp_path, pickled=False)
    samples = load_refcoco(folder, images, 112)  # gt [10,20,60,50] and [60,0,110,112]
    # IoU 25*30 / (50*30) = 0.5 > 0.3 (hit); IoU 50*28 / (50*112) = 0.25 (miss)
    preds = [{"box": [10, 20, 35, 50], "parsed": True}, {"box": [60, 0, 110, 28], "parsed": True}]
    result = referring_precision(preds, samples)
    assert result["p@0.3"] == pytest.approx(0.5) and result["rec_miou"] == pytest.approx(0.375)


def test_clear_errors(tmp_path):
    annotations, images = write_coco(tmp_path)
    with pytest.raises(ValueError, match="unknown evaluation data format 'kitti'"):
        load_eval_samples("kitti", annotations, images, 112)
    with pytest.raises(ValueError, match="needs eval_annotations"):
        load_eval_samples("coco", None, images, 112)
    with pytest.raises(ValueError, match="eval_split does not apply to coco"):
        load_eval_samples("coco", annotations, images, 112, split="val")
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        load_eval_samples("coco", tmp_path / "missing.json", images, 112)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="is not a COCO instances file"):
        load_coco(tmp_path / "list.json", images, 112)
    with pytest.raises(ValueError, match="max_objects must be a positive int, got 0"):
        load_coco(annotations, images, 112, max_objects=0)
    data = json.loads(annotations.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 285]  # only the 4-object image
    (tmp_path / "crowded.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="none of its 4 images has 1 to 3 annotated objects"):
        load_coco(tmp_path / "crowded.json", images, 112)
    _jpeg(images / "000000000724.jpg", 100, 100)  # the json says 200 x 400
    with pytest.raises(ValueError, match="000000000724.jpg: the annotations say height x width = 400 x 200"):
        load_coco(annotations, images, 112)
    (images / "000000000139.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image 139: .*val2017/000000000139\.jpg"):
        load_coco(annotations, images, 112)
    (tmp_path / "VOC").mkdir()
    with pytest.raises(FileNotFoundError, match="VOC split list 'test'"):
        load_voc(tmp_path / "VOC", 112)


# ---------------------------------------------------------------------------------------------- recipe


def test_recipe_evaluates_on_coco_through_main(tmp_path, monkeypatch):
    tok = make_tokenizer()
    base = tmp_path / "base"
    tiny_base(tok).save_pretrained(base)
    Blip2Processor(BlipImageProcessor(size={"height": S, "width": S}), tok, num_query_tokens=4).save_pretrained(base)
    from groundvlm.recipes import toyworld as data

    worlds = {"train": TRAIN, "held_out": HELD}
    monkeypatch.setattr(data, "ToyWorld", lambda seed, split, **kw: SquareWorld(seed, worlds[split]), raising=False)
    monkeypatch.setattr(data, "DEFAULT_SPLIT", NS(train=TRAIN, held_out=HELD), raising=False)
    annotations, images = write_coco(tmp_path / "coco")
    out = tmp_path / "run"
    results = pin_recipe.main(
        [
            "--base_model",
            str(base),
            "--output_dir",
            str(out),
            "--train_images",
            "4",
            "--val_images",
            "2",
            "--epochs",
            "1",
            "--name_reconstruction_fraction",
            "0",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--methods",
            "full_image",
            "pin",
            "--eval_format",
            "coco",
            "--eval_annotations",
            str(annotations),
            "--eval_images",
            str(images),
        ]
    )
    held = results["full_image"]["held_out"]
    assert held["count"] == 4 and results["pin"]["held_out"]["count"] == 4
    # full-image box [0,0,112,112] vs COCO_EXPECTED: IoU 752.64/12544 = 0.06, 1, 0.25, 0.25 -> mean 0.39
    assert held["miou"] == pytest.approx(0.39)
    assert "coco (4 prompts)" in (out / "comparison.md").read_text()
    records = json.loads((out / "predictions_coco.json").read_text())
    assert records["full_image"][0]["box"] == pytest.approx([0, 0, 320, 160])  # pixels of the original image
    assert records["full_image"][0]["gt_box"] == pytest.approx([32, 16, 96, 64])
    assert [r["image_id"] for r in records["pin"]] == [139, 139, 139, 724]
