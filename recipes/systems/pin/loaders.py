"""PIN's real evaluation sets: PASCAL VOC 2007 test, COCO val2017, LVIS v1 val and RefCOCO, as `EvalSample`s.

Protocol (facts from the reference's `eval_dloaders/{voc,coco,lvis,refcoco}_dataset.py`):

| format    | annotations (`annotations`)                              | images (`images_dir`)                       |
|-----------|----------------------------------------------------------|---------------------------------------------|
| `voc`     | VOC2007 folder: `Annotations/<id>.xml`,                  | `<root>/JPEGImages/<id>.jpg` by default     |
|           | `ImageSets/Main/<split>.txt` (split "test")              |                                             |
| `coco`    | `instances_val2017.json` (images, annotations, categories) | `images_dir / file_name`                  |
| `lvis`    | `lvis_v1_val.json` (same keys; images carry `coco_url`)  | `images_dir/<train2017|val2017>/<file>`,    |
|           |                                                          | or `images_dir/<file>`                      |
| `refcoco` | `refs(unc).p` (pickle, opt-in) or a json list of the same | `images_dir / file_name` (COCO train2014)  |
|           | refs, with `instances.json` beside it                    |                                             |

- **Which images**: VOC/COCO/LVIS keep the images with 1 to `max_objects` (3) annotated objects. The count is of
  every annotation of the image as the reference counts it: VOC `difficult` objects and COCO `iscrowd` boxes
  included, and every such object is also prompted. Images without annotations are dropped (the reference's
  COCO/LVIS filter requires at least one; VOC test images always have one). RefCOCO has no object filter.
- **Names**: VOC `<name>` as written ("diningtable", "tvmonitor"; the reference prompts these raw names); COCO
  `categories[].name`; LVIS `name` with "_" -> " " and the disambiguation dropped ("bow_(weapon)" -> "bow"), as
  the reference does; RefCOCO the referring expression (`sentences[-1]["raw"]`, the reference's choice;
  `sentences="all"` gives one sample per sentence, the usual REC protocol).
- **Squash**: each image is resized once to S×S (bilinear, like the reference's `torchvision` `F.resize`; the
  model's own image processor then sees an S×S image and leaves it as is) and its boxes are scaled by (S/W, S/H).
  Images are shared between the samples of one image, so memory is S·S·3 bytes per kept image.
- **Boxes** are xyxy floats in the squashed S×S space. VOC's 1-based inclusive pixel indices become the
  continuous box `[xmin-1, ymin-1, xmax, ymax]`; COCO's `[x, y, w, h]` becomes `[x, y, x+w, y+h]`. We scale
  exactly, where the reference truncates each scaled coordinate to an int (at most 1 px in 224 px, but it makes
  boxes under ~3 original px degenerate, which it then scores 0 and `box_miou` rejects): a box with no area
  after clipping to the image is dropped from the prompts (it still counts for the ≤ 3 filter) and logged.

`AnnotatedSample.to_original(box)` maps a predicted box back to pixels of the original image.
"""

from __future__ import annotations

import json
import logging
import pickle
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from groundvlm.recipes.metrics import load_metric
from groundvlm.recipes.systems.pin.evaluation import EvalSample, squash_box

logger = logging.getLogger("groundvlm")

EVAL_FORMATS = ("none", "toy", "voc", "coco", "lvis", "refcoco")
REAL_FORMATS = ("voc", "coco", "lvis", "refcoco")
DEFAULT_SPLITS = {"voc": "test", "refcoco": "testA"}  # the paper reports RefCOCO Test-A
REFERRING_IOU_THRESHOLD = 0.3  # the paper's P@0.3


@dataclass
class AnnotatedSample(EvalSample):
    """An `EvalSample` from a real dataset: `image` is the S×S squashed image and `box` is in that space.

    Attributes:
        original_size_hw: (height, width) of the image on disk.
        file_name: the image file it came from.
    """

    original_size_hw: tuple[int, int] = (0, 0)
    file_name: str = ""

    def to_original(self, box) -> list[float]:
        """A box `[x1, y1, x2, y2]` in the squashed S×S space -> pixels of the original image."""
        (h, w), (sh, sw) = self.original_size_hw, self.size_hw
        return [box[0] * w / sw, box[1] * h / sh, box[2] * w / sw, box[3] * h / sh]


@dataclass
class _ImageRecord:
    """One image to load: its id, candidate paths (first existing wins), objects `(name, xyxy box in original
    pixels)`, and the (height, width) its annotation file states (None when it states none)."""

    image_id: int | str
    paths: list[Path]
    objects: list[tuple[str, list[float]]]
    annotated_hw: tuple[int, int] | None = None


def _need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def _need_dir(path, what: str) -> Path:
    if not path:
        raise ValueError(f"{what} is required")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} is not a folder")
    return path


def _read_json(path: Path, keys: tuple[str, ...], what: str):
    _need_file(path, what)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if keys and not (isinstance(data, dict) and all(k in data for k in keys)):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a {what}: it needs the keys {list(keys)}, found {found}")
    return data


def _keep_by_count(records: list[_ImageRecord], max_objects: int, source: str) -> list[_ImageRecord]:
    if not (isinstance(max_objects, int) and max_objects >= 1):
        raise ValueError(f"max_objects must be a positive int, got {max_objects!r}")
    kept = [r for r in records if 1 <= len(r.objects) <= max_objects]
    if not kept:
        raise ValueError(f"{source}: none of its {len(records)} images has 1 to {max_objects} annotated objects")
    return kept


def _materialise(
    records: list[_ImageRecord], image_size: int, max_images: int | None, source: str, resample: int
) -> list[AnnotatedSample]:
    """Load, squash and prompt every object of the first `max_images` records (all when None)."""
    if not (isinstance(image_size, int) and image_size > 0):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if max_images is not None:
        if not (isinstance(max_images, int) and max_images >= 1):
            raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
        records = records[:max_images]
    paths, missing = [], []
    for r in records:
        found = next((p for p in r.paths if p.is_file()), None)
        paths.append(found)
        if found is None:
            missing.append(f"image {r.image_id!r}: {' or '.join(str(p) for p in r.paths)}")
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{source}: {len(missing)} image files do not exist: {'; '.join(missing[:3])}{more}")

    samples, dropped = [], 0
    for record, path in zip(records, paths):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        size_hw = (image.height, image.width)
        if record.annotated_hw is not None and tuple(record.annotated_hw) != size_hw:
            raise ValueError(
                f"{path}: the annotations say height x width = {record.annotated_hw[0]} x {record.annotated_hw[1]}, "
                f"the file is {size_hw[0]} x {size_hw[1]}; its boxes would be misplaced"
            )
        squashed = image.resize((image_size, image_size), resample)
        for name, box in record.objects:
            box = squash_box(box, size_hw, image_size)
            if box[2] <= box[0] or box[3] <= box[1]:
                dropped += 1
                continue
            samples.append(
                AnnotatedSample(
                    image=squashed,
                    name=name,
                    box=box,
                    image_id=record.image_id,
                    original_size_hw=size_hw,
                    file_name=str(path),
                )
            )
    if dropped:
        logger.warning("%s: dropped %d boxes with no area inside their image", source, dropped)
    if not samples:
        raise ValueError(f"{source}: no object with a non-empty box is left to prompt")
    logger.info("%s: %d prompts on %d images", source, len(samples), len(records))
    return samples


# ---------------------------------------------------------------------------------------------- VOC


def load_voc(
    root,
    image_size: int,
    split: str = "test",
    images_dir=None,
    max_objects: int = 3,
    max_images: int | None = None,
    resample: int = Image.BILINEAR,
) -> list[AnnotatedSample]:
    """PASCAL VOC detection (e.g. `VOCdevkit/VOC2007`): the images of `ImageSets/Main/<split>.txt` with 1 to
    `max_objects` objects, one sample per object (difficult ones included, as the reference)."""
    root = _need_dir(root, "the VOC folder (eval_annotations)")
    ids_file = _need_file(root / "ImageSets" / "Main" / f"{split}.txt", f"VOC split list {split!r}")
    images_dir = Path(images_dir) if images_dir else root / "JPEGImages"
    ids = [line.split()[0] for line in ids_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{ids_file} lists no image ids")
    records = []
    for image_id in ids:
        xml_path = _need_file(root / "Annotations" / f"{image_id}.xml", f"annotation of VOC image {image_id!r}:")
        ann = ET.parse(xml_path).getroot()
        size = ann.find("size")
        annotated_hw = None
        if size is not None and size.findtext("height") and size.findtext("width"):
            annotated_hw = (int(float(size.findtext("height"))), int(float(size.findtext("width"))))
        objects = []
        for obj in ann.findall("object"):
            name, bndbox = (obj.findtext("name") or "").strip(), obj.find("bndbox")
            if not name or bndbox is None:
                raise ValueError(f"{xml_path}: an <object> without <name> or <bndbox>")
            try:
                x1, y1, x2, y2 = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{xml_path}: object {name!r} has an incomplete or non-numeric <bndbox>") from err
            # VOC boxes are 1-based inclusive pixel indices: pixels xmin..xmax cover [xmin - 1, xmax).
            objects.append((name, [x1 - 1, y1 - 1, x2, y2]))
        records.append(_ImageRecord(image_id, [images_dir / f"{image_id}.jpg"], objects, annotated_hw))
    kept = _keep_by_count(records, max_objects, f"VOC {root} ({split})")
    return _materialise(kept, image_size, max_images, f"VOC {root.name} {split}", resample)


# ---------------------------------------------------------------------------------------------- COCO / LVIS


def lvis_name(name: str) -> str:
    """LVIS category name -> prompt text as the reference writes it: "_" -> " ", "(...)" disambiguation dropped."""
    return name.replace("_", " ").split(" (")[0]


def _instances_records(data: dict, path: Path, names: dict, image_paths, sort_ids: bool) -> list[_ImageRecord]:
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        if ann.get("category_id") not in names:
            raise ValueError(
                f"{path}: annotation {ann.get('id')!r} has category_id {ann.get('category_id')!r}, "
                "which is not in categories"
            )
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise ValueError(f"{path}: annotation {ann.get('id')!r} has no [x, y, w, h] bbox")
        x, y, w, h = (float(v) for v in bbox)
        by_image[ann["image_id"]].append((names[ann["category_id"]], [x, y, x + w, y + h]))
    images = sorted(data["images"], key=lambda im: im["id"]) if sort_ids else data["images"]
    records = []
    for im in images:
        hw = (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None
        records.append(_ImageRecord(im["id"], image_paths(im), by_image.get(im["id"], []), hw))
    return records


def load_coco(
    annotations,
    images_dir,
    image_size: int,
    max_objects: int = 3,
    max_images: int | None = None,
    resample: int = Image.BILINEAR,
) -> list[AnnotatedSample]:
    """COCO instances json (e.g. `instances_val2017.json`): images with 1 to `max_objects` annotations (crowd
    ones counted and prompted, as the reference), in image-id order; names from `categories`."""
    path = Path(annotations)
    data = _read_json(path, ("images", "annotations", "categories"), "COCO instances file")
    images_dir = _need_dir(images_dir, "the COCO image folder (eval_images)")
    names = {c["id"]: c["name"] for c in data["categories"]}
    records = _instances_records(data, path, names, lambda im: [images_dir / im["file_name"]], sort_ids=True)
    return _materialise(
        _keep_by_count(records, max_objects, f"COCO {path}"), image_size, max_images, f"COCO {path.name}", resample
    )


def load_lvis(
    annotations,
    images_dir,
    image_size: int,
    max_objects: int = 3,
    max_images: int | None = None,
    resample: int = Image.BILINEAR,
) -> list[AnnotatedSample]:
    """LVIS json (e.g. `lvis_v1_val.json`): images with 1 to `max_objects` annotations, in file order.

    LVIS v1 images have no `file_name`: the file and its COCO folder come from `coco_url`
    (".../val2017/000000397133.jpg"); `images_dir` is the COCO root holding train2017/ and val2017/, or a single
    folder holding the files directly.
    """
    path = Path(annotations)
    data = _read_json(path, ("images", "annotations", "categories"), "LVIS annotation file")
    images_dir = _need_dir(images_dir, "the COCO image root for LVIS (eval_images)")
    names = {c["id"]: lvis_name(c["name"]) for c in data["categories"]}

    def image_paths(im):
        if "file_name" in im:
            return [images_dir / im["file_name"]]
        if "coco_url" not in im:
            raise ValueError(f"{path}: image {im.get('id')!r} has neither file_name nor coco_url")
        folder, file = im["coco_url"].rstrip("/").split("/")[-2:]
        return [images_dir / folder / file, images_dir / file]

    records = _instances_records(data, path, names, image_paths, sort_ids=False)
    return _materialise(
        _keep_by_count(records, max_objects, f"LVIS {path}"), image_size, max_images, f"LVIS {path.name}", resample
    )


# ---------------------------------------------------------------------------------------------- RefCOCO


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and scalars only: any class or function reference is refused, so a
    tampered file cannot run code (the refs pickles hold only dicts, lists, strings and ints)."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"the refs pickle references {module}.{name}; only plain dicts/lists/strings/numbers are accepted"
        )


def _resolve_refs(annotations) -> Path:
    path = Path(annotations)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"RefCOCO refs {path} is neither a refs file nor a folder holding one")
    for name in ("refs(unc).json", "refs(unc).p"):
        if (path / name).is_file():
            return path / name
    found = sorted(p.name for p in path.glob("refs(*)*") if p.suffix in (".json", ".p"))
    if len(found) == 1:
        return path / found[0]
    raise FileNotFoundError(
        f"{path}: expected refs(unc).json or refs(unc).p (or exactly one refs(*) file), found {found or 'none'}; "
        "pass the refs file itself"
    )


def _load_refs(path: Path, allow_pickle: bool) -> list[dict]:
    if path.suffix == ".json":
        refs = _read_json(path, (), "RefCOCO refs file")
    elif path.suffix in (".p", ".pkl", ".pickle"):
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle; loading pickles is opt-in: pass allow_pickle=True (--eval_allow_pickle true) "
                "if you trust the file (it is read with an unpickler that refuses any class or function), or "
                "give a json list of the same refs"
            )
        with open(path, "rb") as f:
            refs = _PlainDataUnpickler(f, encoding="utf-8").load()
    else:
        raise ValueError(f"{path}: RefCOCO refs must be a .json or a .p pickle file")
    needed = ("image_id", "ann_id", "split", "sentences")
    if (
        not isinstance(refs, list)
        or not refs
        or not all(isinstance(r, dict) and all(k in r for k in needed) for r in refs)
    ):
        raise ValueError(f"{path} is not a RefCOCO refs list: each ref needs the keys {list(needed)}")
    return refs


def load_refcoco(
    refs,
    images_dir,
    image_size: int,
    split: str = "testA",
    instances=None,
    allow_pickle: bool = False,
    sentences: str = "last",
    max_images: int | None = None,
    resample: int = Image.BILINEAR,
) -> list[AnnotatedSample]:
    """RefCOCO / RefCOCO+ / RefCOCOg: the refs of `split`, their boxes from `instances.json`, the expression as
    the object text.

    Args:
        refs: `refs(unc).p`, a json list of the same refs, or the folder holding one (and `instances.json`).
        images_dir: the COCO train2014 image folder.
        split: "val", "testA", "testB" (RefCOCO/RefCOCO+), "val"/"test" (RefCOCOg umd).
        instances: the instances json (default: `instances.json` beside the refs file).
        allow_pickle: required to read a pickled refs file.
        sentences: "last" (one sample per ref, its last sentence: the reference) or "all" (one per sentence).
        max_images: keep the refs of the first `max_images` images only.
    """
    if sentences not in ("last", "all"):
        raise ValueError(f"sentences must be 'last' or 'all', got {sentences!r}")
    refs_path = _resolve_refs(refs)
    instances = Path(instances) if instances else refs_path.parent / "instances.json"
    data = _read_json(instances, ("images", "annotations"), "RefCOCO instances file")
    images_dir = _need_dir(images_dir, "the COCO train2014 image folder (eval_images)")
    all_refs = _load_refs(refs_path, allow_pickle)
    chosen = [r for r in all_refs if r["split"] == split]
    if not chosen:
        splits = sorted({r["split"] for r in all_refs})
        raise ValueError(f"{refs_path} has no refs in split {split!r}; its splits: {splits}")
    images = {im["id"]: im for im in data["images"]}
    boxes = {ann["id"]: ann["bbox"] for ann in data["annotations"]}
    by_image: dict = {}
    for ref in chosen:
        if ref["ann_id"] not in boxes or ref["image_id"] not in images:
            raise ValueError(
                f"ref {ref.get('ref_id')!r}: ann_id {ref['ann_id']!r} or image_id {ref['image_id']!r} "
                f"is not in {instances}"
            )
        x, y, w, h = (float(v) for v in boxes[ref["ann_id"]])
        texts = [s.get("raw", s.get("sent", "")).strip() for s in ref["sentences"]]
        texts = texts[-1:] if sentences == "last" else texts
        if not texts or not all(texts):
            raise ValueError(f"ref {ref.get('ref_id')!r} has an empty referring expression")
        if ref["image_id"] not in by_image:
            im = images[ref["image_id"]]
            hw = (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None
            by_image[ref["image_id"]] = _ImageRecord(ref["image_id"], [images_dir / im["file_name"]], [], hw)
        by_image[ref["image_id"]].objects += [(t, [x, y, x + w, y + h]) for t in texts]
    return _materialise(list(by_image.values()), image_size, max_images, f"RefCOCO {refs_path.name} {split}", resample)


def referring_precision(
    predictions: list[dict], samples: list[EvalSample], iou_threshold: float = REFERRING_IOU_THRESHOLD
) -> dict:
    """P@`iou_threshold` (`rec_accuracy`, IoU strictly above the threshold) of predicted boxes (in each sample's
    own pixel space, as `pin_eval.predict` returns them); an unparsed answer scores with its fallback box, as in
    the reference. Returns {"p@0.3": accuracy, "rec_miou": mean IoU}."""
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    result = load_metric("rec_accuracy").compute(
        predictions=[p["box"] for p in predictions], references=[s.box for s in samples], iou_threshold=iou_threshold
    )
    return {f"p@{iou_threshold:g}": result["accuracy"], "rec_miou": result["miou"]}


# ---------------------------------------------------------------------------------------------- entry points


def load_eval_samples(
    eval_format: str,
    annotations,
    images,
    image_size: int,
    split: str | None = None,
    max_images: int | None = None,
    allow_pickle: bool = False,
    resample: int = Image.BILINEAR,
) -> list[AnnotatedSample]:
    """The real evaluation set `eval_format` ("voc", "coco", "lvis", "refcoco"); `annotations` / `images` as
    in the table of this module; `split` defaults to VOC "test" and RefCOCO "testA" (and is an error for COCO
    and LVIS, whose json is the split)."""
    if eval_format not in REAL_FORMATS:
        raise ValueError(f"unknown evaluation data format {eval_format!r}; real formats: {', '.join(REAL_FORMATS)}")
    if not annotations:
        raise ValueError(
            f"eval_format {eval_format!r} needs eval_annotations (see groundvlm.recipes.systems.pin.loaders)"
        )
    if split is not None and eval_format in ("coco", "lvis"):
        raise ValueError(f"eval_split does not apply to {eval_format}: the annotation file is the split")
    split = split or DEFAULT_SPLITS.get(eval_format)
    common = {"max_images": max_images, "resample": resample}
    if eval_format == "voc":
        return load_voc(annotations, image_size, split=split, images_dir=images, **common)
    if not Path(annotations).exists():
        raise FileNotFoundError(f"eval_annotations {annotations} does not exist")
    if eval_format == "coco":
        return load_coco(annotations, images, image_size, **common)
    if eval_format == "lvis":
        return load_lvis(annotations, images, image_size, **common)
    return load_refcoco(annotations, images, image_size, split=split, allow_pickle=allow_pickle, **common)


def prediction_records(samples: list[AnnotatedSample], predictions: list[dict]) -> list[dict]:
    """Per prompt: image id, file, object text, ground truth and prediction as pixels of the ORIGINAL image,
    whether the answer parsed, and the generated text (json-ready)."""
    if len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    return [
        {
            "image_id": s.image_id,
            "file_name": s.file_name,
            "name": s.name,
            "gt_box": s.to_original(s.box),
            "box": s.to_original(p["box"]),
            "parsed": p["parsed"],
            "text": p["text"],
        }
        for s, p in zip(samples, predictions)
    ]


__all__ = [
    "AnnotatedSample",
    "DEFAULT_SPLITS",
    "EVAL_FORMATS",
    "REAL_FORMATS",
    "load_coco",
    "load_eval_samples",
    "load_lvis",
    "load_refcoco",
    "load_voc",
    "lvis_name",
    "prediction_records",
    "referring_precision",
    "squash_box",
]
