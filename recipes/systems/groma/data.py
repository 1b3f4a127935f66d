"""Groma's training and evaluation data: the toy world's tasks and loaders for the real formats, all turned into
the same two sample kinds, plus the collators.

Detection sample: `{"image": PIL, "boxes": [[x1, y1, x2, y2] px], "source": "coco" | "sa1b"}`.
Chat sample: `{"image": PIL, "task", "messages": [{"role", "content"}], "refer_boxes": [[px]], "ground_boxes":
[[px]]}` where user turns write a referred region as `<refer>` (one `refer_boxes` entry each, in order) and
assistant turns write an answer box as `<ground_box>` (one `ground_boxes` entry each). Evaluation samples add
`"gt_boxes"` (REC: one box; grounding: every phrase's boxes), `"phrases"` or `"reference"` captions.

Instructions and answer formats follow FoundationVision/groma groma/data/datasets/*.py: REC
(`refcoco_rec.py`): "Locate <p>expr</p> in the image." -> `<roi><ground_box></roi>`; grounded captions
(`flickr.py`): `[grounding]` + "Give me a concise description of the image." -> the caption with each entity as
`<p>span</p><roi><ground_box>..</roi>`; region captions (`vg.py`): "What is <refer>?" -> the caption lower-cased,
then capitalised; Groma Instruct / LLaVA conversations as given (`<image>` stripped, newlines -> spaces).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Sampler
from torchvision.ops import box_convert

from groundvlm.processing.processing_groma import ASSISTANT_SEP, build_groma_prompt
from groundvlm.recipes.systems.pin.loaders import _load_refs, _resolve_refs
from groundvlm.recipes.toyworld import ToyWorld, texts

REC_INSTRUCTIONS = (
    "Locate {} in the image.",
    "Can you spot {} in the photograph?",
    "Which region matches the description {}?",
    "Find {} in this image.",
)
GROUNDED_CAPTION_INSTRUCTION = "[grounding]Give me a concise description of the image."
REGION_CAPTION_INSTRUCTIONS = ("What is {}?", "Please briefly describe {}.", "Provide a short description for {}.")
IMAGE_CAPTION_INSTRUCTION = "Describe the image briefly."
REC_EVAL_INSTRUCTION = REC_INSTRUCTIONS[0]
REGION_CAPTION_EVAL_INSTRUCTION = REGION_CAPTION_INSTRUCTIONS[0]

# SA-1B boxes kept for detection pretraining: area in [14^2, 400^2] px at 448 px (FoundationVision/groma
# groma/data/configs/det_pretrain.py), i.e. this range of the image area.
SA1B_AREA_RANGE = ((14 / 448) ** 2, (400 / 448) ** 2)


def capitalise(caption: str) -> str:
    """The reference's region-caption answer: lower-cased, then the first letter upper-cased."""
    caption = caption.strip().lower()
    return caption[:1].upper() + caption[1:]


def grounded_answer(caption: str, spans: list[tuple[int, int, list]]) -> tuple[str, list]:
    """Rewrite `caption` with every `(start, end, boxes)` span as `<p>span</p><roi><ground_box>*k</roi>`;
    returns the answer and its ground boxes in token order."""
    out, boxes, end = [], [], 0
    for start, stop, span_boxes in sorted(spans, key=lambda s: s[0]):
        out.append(caption[end:start])
        out.append(f"<p>{caption[start:stop]}</p><roi>" + "<ground_box>" * len(span_boxes) + "</roi>")
        boxes.extend(list(b) for b in span_boxes)
        end = stop
    out.append(caption[end:])
    return "".join(out), boxes


def chat(image, task: str, turns: list[tuple[str, str]], refer=(), ground=(), **extra) -> dict:
    messages = []
    for user, assistant in turns:
        messages.append({"role": "user", "content": user})
        if assistant is not None:
            messages.append({"role": "assistant", "content": assistant})
    return {"image": image, "task": task, "messages": messages, "refer_boxes": [list(b) for b in refer],
            "ground_boxes": [list(b) for b in ground], **extra}  # fmt: skip


# ------------------------------------------------------------------------------------------------ toy world


def toy_detection(world: ToyWorld, count: int, start: int = 0) -> list[dict]:
    """Detection samples; every second one plays SA-1B's part (its boxes filtered by SA-1B's area range), so both
    objectness heads train as in the reference's two-source mix (the toy world has one kind of annotation)."""
    samples = []
    for i in range(start, start + count):
        scene = world.scene(i)
        area = float(scene.size[0] * scene.size[1])
        source = "coco" if i % 2 == 0 else "sa1b"
        boxes = [list(o.box) for o in scene.objects]
        if source == "sa1b":
            lo, hi = SA1B_AREA_RANGE
            boxes = [b for b in boxes if lo <= (b[2] - b[0]) * (b[3] - b[1]) / area <= hi]
        samples.append({"image": scene.image, "boxes": boxes, "source": source})
    return samples


def toy_chats(world: ToyWorld, count: int, stage: str, start: int = 0) -> list[dict]:
    """Training conversations from `count` scenes. align: one single-turn sample per task (image caption, REC,
    grounded caption, region caption) as the reference's stage-2 mix; instruct: REC and grounded captions plus a
    multi-round region-caption / REC conversation per scene (as its VG multi-round and Groma Instruct data)."""
    samples = []
    for i in range(start, start + count):
        scene, rng = world.scene(i), world.text_rng(i)
        objs = scene.objects
        refs = texts.referring(scene, rng)
        expr, target = refs[rng.integers(len(refs))]
        rec = (
            REC_INSTRUCTIONS[rng.integers(len(REC_INSTRUCTIONS))].format(f"<p>{expr}</p>"),
            "<roi><ground_box></roi>",
        )
        caption, spans = texts.grounded_caption(scene, rng)
        answer, boxes = grounded_answer(caption, spans)
        k = int(rng.integers(len(objs)))
        region = (
            REGION_CAPTION_INSTRUCTIONS[rng.integers(3)].format("<refer>"),
            capitalise(texts.region_caption(objs[k])),
        )
        samples.append(chat(scene.image, "rec", [rec], ground=[objs[target].box]))
        samples.append(chat(scene.image, "grounded_caption", [(GROUNDED_CAPTION_INSTRUCTION, answer)], ground=boxes))
        if stage == "align":
            samples.append(
                chat(scene.image, "caption", [(IMAGE_CAPTION_INSTRUCTION, capitalise(texts.caption(scene, rng)))])
            )
            samples.append(chat(scene.image, "region_caption", [region], refer=[objs[k].box]))
        else:
            order = [int(j) for j in rng.permutation(len(objs))]
            turns, refer, ground = [], [], []
            for j in order:
                if rng.random() < 0.5:
                    turns.append((REGION_CAPTION_INSTRUCTIONS[rng.integers(3)].format("<refer>"),
                                  capitalise(texts.region_caption(objs[j]))))  # fmt: skip
                    refer.append(objs[j].box)
                else:
                    turns.append((REC_INSTRUCTIONS[rng.integers(4)].format(f"<p>{texts.region_caption(objs[j])}</p>"),
                                  "<roi><ground_box></roi>"))  # fmt: skip
                    ground.append(objs[j].box)
            samples.append(chat(scene.image, "multi_round", turns, refer=refer, ground=ground))
    return samples


def toy_eval_sets(world: ToyWorld, count: int, start: int = 0) -> dict[str, list[dict]]:
    """Evaluation samples of `count` scenes: every referring expression (REC), every object (region caption), one
    grounded caption per scene, and the detection boxes."""
    sets = {"rec": [], "region_caption": [], "grounded_caption": [], "det": []}
    for i in range(start, start + count):
        scene, rng = world.scene(i), world.text_rng(i)
        for expr, target in texts.referring(scene, rng):
            sets["rec"].append(chat(scene.image, "rec", [(REC_EVAL_INSTRUCTION.format(f"<p>{expr}</p>"), None)],
                                    gt_boxes=[list(scene.objects[target].box)], expression=expr))  # fmt: skip
        for obj in scene.objects:
            sets["region_caption"].append(chat(
                scene.image, "region_caption", [(REGION_CAPTION_EVAL_INSTRUCTION.format("<refer>"), None)],
                refer=[obj.box], reference=[capitalise(texts.region_caption(obj))]))  # fmt: skip
        caption, spans = texts.grounded_caption(scene, rng)
        phrases = [(caption[a:b], [list(x) for x in bxs]) for a, b, bxs in spans]
        sets["grounded_caption"].append(chat(scene.image, "grounded_caption", [(GROUNDED_CAPTION_INSTRUCTION, None)],
                                             phrases=phrases, gt_boxes=[list(o.box) for o in scene.objects]))  # fmt: skip
        sets["det"].append({"image": scene.image, "boxes": [list(o.box) for o in scene.objects], "source": "coco"})
    return sets


# ------------------------------------------------------------------------------------------------ real formats


def _image(images_dir, name) -> Image.Image:
    path = Path(images_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found (images_dir={images_dir})")
    return Image.open(path).convert("RGB")


def _xywh(box) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _json(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    return json.loads(path.read_text(encoding="utf-8"))


def load_refcoco(refs, instances, images_dir, split: str = "val", allow_pickle: bool = False, train: bool = False,
                 max_samples: int | None = None) -> list[dict]:  # fmt: skip
    """RefCOCO / RefCOCO+ / RefCOCOg: `refs(unc).p` (pickle: only with `allow_pickle`, read by an unpickler that
    refuses any class) or the same list as json, plus COCO `instances.json`; COCO train2014 images. One sample per
    sentence of the split's refs: REC eval samples, or (`train`) REC training conversations."""
    ref_list = _load_refs(_resolve_refs(refs), allow_pickle)
    data = _json(instances, "RefCOCO instances.json")
    anns = {a["id"]: a for a in data["annotations"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    samples = []
    for ref in ref_list:
        if ref["split"] != split:
            continue
        box = _xywh(anns[ref["ann_id"]]["bbox"])
        for k, sentence in enumerate(ref["sentences"]):
            expr = sentence["sent"] if isinstance(sentence, dict) else str(sentence)
            image = _image(images_dir, files[ref["image_id"]])
            instruction = REC_INSTRUCTIONS[k % len(REC_INSTRUCTIONS)] if train else REC_EVAL_INSTRUCTION
            answer = "<roi><ground_box></roi>" if train else None
            samples.append(chat(image, "rec", [(instruction.format(f"<p>{expr}</p>"), answer)],
                                ground=[box] if train else [], gt_boxes=[box], expression=expr))  # fmt: skip
            if max_samples is not None and len(samples) >= max_samples:
                return samples
    return samples


_FLICKR_PHRASE = re.compile(r"\[/EN#(\d+)/[^\s\]]*\s([^\]]*)\]")


def load_flickr30k_entities(root, images_dir, ids: list[str] | None = None, train: bool = True) -> list[dict]:
    """Flickr30k Entities grounded captions: `root/Sentences/<id>.txt` ("[/EN#18/people A man] ...") and
    `root/Annotations/<id>.xml` (boxes per entity id); images `<images_dir>/<id>.jpg`. The first sentence of each
    image whose phrases all have boxes becomes a grounded-caption sample (the reference trains on one per image)."""
    root = Path(root)
    ids = ids or sorted(p.stem for p in (root / "Sentences").glob("*.txt"))
    samples = []
    for image_id in ids:
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml")
        boxes: dict[str, list] = {}
        for obj in tree.getroot().iter("object"):
            bnd = obj.find("bndbox")
            if bnd is None:
                continue
            box = [float(bnd.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            for name in obj.iter("name"):
                boxes.setdefault(name.text, []).append(box)
        for line in (root / "Sentences" / f"{image_id}.txt").read_text(encoding="utf-8").splitlines():
            caption, spans, end = "", [], 0
            for m in _FLICKR_PHRASE.finditer(line):
                caption += line[end : m.start()]
                spans.append((len(caption), len(caption) + len(m.group(2)), boxes.get(m.group(1), [])))
                caption += m.group(2)
                end = m.end()
            caption += line[end:]
            spans = [s for s in spans if s[2]]
            if spans:
                answer, ground = grounded_answer(caption.strip(), spans)
                image = _image(images_dir, f"{image_id}.jpg")
                phrases = [(caption[a:b], bxs) for a, b, bxs in spans]
                samples.append(chat(image, "grounded_caption", [(GROUNDED_CAPTION_INSTRUCTION, answer if train else None)],
                                    ground=ground if train else [], phrases=phrases,
                                    gt_boxes=[b for _, bxs in phrases for b in bxs]))  # fmt: skip
                break
    return samples


def load_vg_regions(region_descriptions, images_dir, train: bool = True, max_regions: int = 1) -> list[dict]:
    """Visual Genome `region_descriptions.json` ([{"id", "regions": [{"x", "y", "width", "height", "phrase",
    "image_id"}]}]), images `<images_dir>/<image_id>.jpg`: region-caption samples, the first `max_regions` regions
    per image (the reference's single-round VG data; several make a multi-round conversation)."""
    samples = []
    for entry in _json(region_descriptions, "Visual Genome region descriptions"):
        regions = entry["regions"][:max_regions]
        if not regions:
            continue
        image = _image(images_dir, f"{regions[0]['image_id']}.jpg")
        turns = [(REGION_CAPTION_EVAL_INSTRUCTION.format("<refer>"), capitalise(r["phrase"]) if train else None)
                 for r in regions]  # fmt: skip
        boxes = [_xywh((r["x"], r["y"], r["width"], r["height"])) for r in regions]
        samples.append(chat(image, "region_caption", turns, refer=boxes, reference=[capitalise(regions[0]["phrase"])]))
    return samples


def load_lvis(annotations, images_dir, max_samples: int | None = None) -> list[dict]:
    """LVIS-Ground queries from `lvis_v1_val.json`: one "Locate all <p>category</p> in this image." per (image,
    category) with its boxes (the reference's eval_lvis.py); images found by the file name of `coco_url`."""
    data = _json(annotations, "LVIS annotations")
    names = {c["id"]: c["name"].replace("_", " ") for c in data["categories"]}
    files = {im["id"]: im.get("file_name") or im["coco_url"].rsplit("/", 1)[1] for im in data["images"]}
    per_query: dict[tuple[int, int], list] = {}
    for ann in data["annotations"]:
        per_query.setdefault((ann["image_id"], ann["category_id"]), []).append(_xywh(ann["bbox"]))
    samples = []
    for (image_id, cat), boxes in sorted(per_query.items()):
        image = _image(images_dir, files[image_id])
        samples.append(chat(image, "lvis", [(f"Locate all <p>{names[cat]}</p> in this image.", None)],
                            gt_boxes=boxes, category_id=cat))  # fmt: skip
        if max_samples is not None and len(samples) >= max_samples:
            break
    return samples


def load_conversations(path, images_dir, grounding: bool | None = None) -> list[dict]:
    """LLaVA-Instruct (`[{"image", "conversations": [{"from": "human"|"gpt", "value"}]}]`) or Groma Instruct
    (`[{"image", "width", "height", "boxes": [xywh px], "conversation": [{"from"?, "value", "box_inds"}]}]`, the
    assistant text holding `<ground_box>` tokens whose boxes `box_inds` gives in order). LLaVA: `<image>` is
    stripped and newlines become spaces; Groma Instruct: every user turn is prefixed with `[grounding]`."""
    samples = []
    for entry in _json(path, "conversation json"):
        groma = "conversation" in entry
        turns = entry["conversation"] if groma else entry["conversations"]
        boxes = [_xywh(b) for b in entry.get("boxes", [])]
        messages, ground = [], []
        for k, turn in enumerate(turns):
            role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}.get(
                turn.get("from"), "user" if k % 2 == 0 else "assistant"
            )
            text = " ".join(turn["value"].replace("<image>", "").split())
            if (
                role == "user"
                and (grounding if grounding is not None else groma)
                and not text.startswith("[grounding]")
            ):
                text = "[grounding]" + text
            if role == "assistant":
                inds = turn.get("box_inds", [])
                if text.count("<ground_box>") != len(inds):
                    raise ValueError(
                        f"{path}: a turn has {text.count('<ground_box>')} <ground_box> but box_inds {inds}"
                    )
                ground.extend(boxes[i] for i in inds)
            messages.append({"role": role, "content": text})
        image = _image(images_dir, entry["image"])
        samples.append({"image": image, "task": "conversation", "messages": messages, "refer_boxes": [],
                        "ground_boxes": ground})  # fmt: skip
    return samples


# ------------------------------------------------------------------------------------------------ collators


def render(messages: list[dict], template: str) -> tuple[str, list[tuple[int, int]]]:
    """The prompt of a full conversation and the character spans of its assistant turns (what the loss sees).

    `template`: "llava" (instruction finetuning: assistant turns end with `</s>`, which is supervised) or
    "default" (alignment pretraining: the separator is a space, so the model never sees `</s>`), as the reference's
    groma/data/conversation.py."""
    if template not in ("llava", "default"):
        raise ValueError(f"template must be 'llava' or 'default', got {template!r}")
    spans = []
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(build_groma_prompt(messages[:k], add_generation_prompt=True))
            end = len(build_groma_prompt(messages[: k + 1], add_generation_prompt=False))
            spans.append((start, end if template == "llava" else end - len(ASSISTANT_SEP)))
    prompt = build_groma_prompt(messages, add_generation_prompt=False)
    if template == "default":
        # the fixed first turn's `</s>` too; spans before it shift by len(" ") - len("</s>") per earlier separator
        shift = len(" ") - len(ASSISTANT_SEP)
        spans = [(s + shift * prompt[:s].count(ASSISTANT_SEP), e + shift * prompt[:e].count(ASSISTANT_SEP))
                 for s, e in spans]  # fmt: skip
        prompt = prompt.replace(ASSISTANT_SEP, " ")
    return prompt, spans


def _normalised_cxcywh(boxes, size_hw) -> torch.Tensor:
    """Pixel xyxy boxes of an image of `size_hw` -> normalised cxcywh in [0, 1] (n, 4)."""
    if not len(boxes):
        return torch.zeros(0, 4)
    h, w = size_hw
    b = box_convert(torch.tensor(boxes, dtype=torch.float32), "xyxy", "cxcywh")
    return (b / torch.tensor([w, h, w, h], dtype=torch.float32)).clamp(0, 1)


class GromaChatCollator:
    """Chat samples -> model inputs with labels on the assistant turns only (everything else -100).

    Tokens whose characters lie inside an assistant span (its text and, with "llava", its `</s>`) are supervised;
    the spans are mapped onto the processor's expanded prompt through its replacement offsets. `<ground_box>`
    answer tokens are resolved to proxy tokens by the model (`ground_boxes`)."""

    def __init__(self, processor, template: str = "llava"):
        self.processor = processor
        self.template = template

    def __call__(self, samples: list[dict]) -> dict:
        rendered = [render(s["messages"], self.template) for s in samples]
        refer = [s["refer_boxes"] for s in samples]
        batch = self.processor(
            images=[s["image"] for s in samples], text=[p for p, _ in rendered],
            refer_boxes=refer if any(refer) else None, return_offsets_mapping=True,
            return_text_replacement_offsets=True, padding_side="right",
        )  # fmt: skip
        offsets = batch.pop("offset_mapping")
        replacements = batch.pop("text_replacement_offsets")
        labels = torch.full_like(batch["input_ids"], -100)
        for i, (_, spans) in enumerate(rendered):
            for start, end in spans:
                a, b = (_expanded(p, replacements[i]) for p in (start, end))
                inside = (offsets[i, :, 0] >= a) & (offsets[i, :, 1] <= b) & (offsets[i, :, 1] > offsets[i, :, 0])
                labels[i][inside] = batch["input_ids"][i][inside]
        sizes = batch.pop("image_sizes").tolist()
        batch["labels"] = labels
        batch["ground_boxes"] = [_normalised_cxcywh(s["ground_boxes"], hw) for s, hw in zip(samples, sizes)]
        return dict(batch)


def _expanded(position: int, replacements: list[dict]) -> int:
    """A character position of the rendered prompt in the processor's expanded prompt."""
    shift = 0
    for r in replacements:
        if r["span"][1] <= position:
            shift += (r["new_span"][1] - r["new_span"][0]) - (r["span"][1] - r["span"][0])
    return position + shift


class DetectionCollator:
    """Detection samples of one source -> pixel values, normalised cxcywh targets and the source's head.
    Horizontal flip with p = 0.5 (the reference's augmentation, without its random crop)."""

    def __init__(self, image_processor, flip: bool = True):
        self.image_processor = image_processor
        self.flip = flip

    def __call__(self, samples: list[dict]) -> dict:
        sources = {s["source"] for s in samples}
        if len(sources) != 1:
            raise ValueError(f"a detection batch must come from one source (both heads train apart), got {sources}")
        images, targets = [], []
        for s in samples:
            image, boxes = s["image"], _normalised_cxcywh(s["boxes"], (s["image"].height, s["image"].width))
            if self.flip and torch.rand(()) < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                boxes[:, 0] = 1 - boxes[:, 0]
            images.append(image)
            targets.append({"boxes": boxes, "class_labels": torch.zeros(len(boxes), dtype=torch.long)})
        pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "targets": targets, "source": sources.pop()}


class SourceBatchSampler(Sampler):
    """Indices in batches of one source each (the reference's `group_by_data_source` RandomBatchSampler): shuffled
    within each source, cut into full batches, batches shuffled; a new order every epoch, from `seed`."""

    def __init__(self, sources: list[str], batch_size: int, seed: int = 0):
        self.sources, self.batch_size, self.seed, self.epoch = list(sources), batch_size, seed, 0

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for source in sorted(set(self.sources)):
            idx = [i for i, s in enumerate(self.sources) if s == source]
            idx = [idx[j] for j in rng.permutation(len(idx))]
            batches += [idx[k : k + self.batch_size] for k in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        return [batches[j] for j in rng.permutation(len(batches))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for batch in self._batches():
            yield from batch

    def __len__(self) -> int:
        return sum(len(b) for b in self._batches())


def load_coco_detection(annotations, images_dir, source: str = "coco") -> list[dict]:
    """Class-agnostic detection samples from a COCO-format json (COCO, Objects365, OpenImages, V3Det, SA-1B as
    the reference's groma_data jsons); SA-1B boxes are kept only within SA1B_AREA_RANGE of the image area."""
    if source not in ("coco", "sa1b"):
        raise ValueError(f"detection source must be 'coco' or 'sa1b', got {source!r}")
    data = _json(annotations, "detection annotations")
    per_image: dict[int, list] = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image.setdefault(ann["image_id"], []).append(_xywh(ann["bbox"]))
    samples = []
    for im in data["images"]:
        boxes = per_image.get(im["id"], [])
        if source == "sa1b":
            area = float(im["width"] * im["height"])
            lo, hi = SA1B_AREA_RANGE
            boxes = [b for b in boxes if lo <= (b[2] - b[0]) * (b[3] - b[1]) / area <= hi]
        if boxes:
            samples.append({"image": _image(images_dir, im["file_name"]), "boxes": boxes, "source": source})
    return samples
