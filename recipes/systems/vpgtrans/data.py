"""VPGTrans data: caption / VQA examples from the toy world or from the real formats, and the batch collators.

Every source yields plain dicts, so the recipe, the evaluation and the tests treat toy and real data alike:

- caption training example: `{"image": PIL.Image, "text": str}`
- caption evaluation example: `{"image": PIL.Image, "references": list[str], "image_id": str}`
- VQA evaluation example: `{"image": PIL.Image, "question": str, "answers": list[str], "question_id": str}`

Real formats (paths given by the user; images are opened lazily):

| loader                   | file                                                            | image path                          |
|--------------------------|-----------------------------------------------------------------|-------------------------------------|
| `load_coco_karpathy`     | LAVIS `coco_karpathy_{train,val,test}.json` (list of records)   | `image_root / record["image"]`      |
|                          | or Karpathy's `dataset_coco.json` (`{"images": [...]}`)         | `image_root / filepath / filename`  |
| `load_vqa`               | VQAv2 / OK-VQA `*_questions.json` + `*_annotations.json`        | `image_root / COCO_<subtype>_<id:012d>.jpg` |
| `load_gqa`               | GQA `*_balanced_questions.json` (`{qid: {...}}`)                | `image_root / <imageId>.jpg`        |

Toy data (`ToyCaptions`, `ToyVQA`) render their scenes of `groundvlm.recipes.toyworld.ToyWorld` once, when the
dataset is built (`toyworld.world.render_scenes`), and read them back in every epoch, with the
position-free captions and colour/shape/count questions of `groundvlm.recipes.toyworld.texts`; the per-example text is drawn
from a generator seeded by (seed, index), so an example is the same in every epoch, process and run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from groundvlm.modeling.vpgtrans_transfer import pre_caption
from groundvlm.recipes.systems.vpgtrans.arguments import VPGTransScriptArguments


def _open_rgb(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"Image {path} does not exist (check image_root).")
    with Image.open(path) as image:
        return image.convert("RGB")


def _read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Annotation file {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _LazyImages(Dataset):
    """Records with an `image_path`; `__getitem__` opens the image and returns the record without the path."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = dict(self.records[index])
        record["image"] = _open_rgb(Path(record.pop("image_path")))
        return record


def load_coco_karpathy(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str | None = None,
    train: bool | None = None,
) -> Dataset:
    """COCO captions in the Karpathy split.

    Two layouts are read:
    - LAVIS (`coco_karpathy_train.json`: one record per caption `{"image", "caption", "image_id"}`;
      `coco_karpathy_{val,test}.json`: one record per image `{"image", "caption": [5 captions]}`);
    - Karpathy's `dataset_coco.json` (`{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}`),
      filtered by `split` ("train" takes "train" and "restval", as the Karpathy split does).

    `train=True` gives caption training examples (one per caption, `pre_caption`-normalised as LAVIS
    `blip_caption` with 50 words); `train=False` gives one evaluation example per image with all its captions as
    references. Default: train for the LAVIS train file / split "train", eval otherwise.
    """
    data = _read_json(annotation_file)
    root = Path(image_root)
    per_image: dict[str, tuple[Path, list[str]]] = {}
    if isinstance(data, dict) and "images" in data:
        if split is None:
            raise ValueError("dataset_coco.json holds every split; pass split='train', 'val' or 'test'.")
        wanted = {"train", "restval"} if split == "train" else {split}
        for img in data["images"]:
            if img.get("split") in wanted:
                key = str(img.get("cocoid", img["filename"]))
                per_image[key] = (
                    root / img.get("filepath", "") / img["filename"],
                    [s["raw"] for s in img["sentences"]],
                )
        if train is None:
            train = split == "train"
    elif isinstance(data, list):
        for record in data:
            if "image" not in record or "caption" not in record:
                raise ValueError(
                    f"{annotation_file}: a LAVIS Karpathy record needs 'image' and 'caption', got {sorted(record)}."
                )
            caps = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
            key = str(record.get("image_id", record["image"]))
            entry = per_image.setdefault(key, (root / record["image"], []))
            entry[1].extend(caps)
        if train is None:
            train = all(isinstance(r["caption"], str) for r in data)
    else:
        raise ValueError(f"{annotation_file} is neither a LAVIS Karpathy list nor Karpathy's dataset_coco.json.")
    if not per_image:
        raise ValueError(f"{annotation_file} holds no captions" + (f" for split {split!r}." if split else "."))
    if train:
        records = [
            {"image_path": path, "text": pre_caption(c, max_words=50)}
            for path, caps in per_image.values()
            for c in caps
        ]
    else:
        records = [{"image_path": path, "references": caps, "image_id": key} for key, (path, caps) in per_image.items()]
    return _LazyImages(records)


def load_vqa(
    questions_file: str | os.PathLike,
    annotations_file: str | os.PathLike,
    image_root: str | os.PathLike,
    image_name: str = "COCO_{subtype}_{image_id:012d}.jpg",
) -> Dataset:
    """VQAv2 / OK-VQA evaluation examples from the official question + annotation jsons.

    The answers of a question are its (usually 10) human `answers[*].answer`, which VQA accuracy scores against.
    `image_name` is formatted with the image id and the questions file's `data_subtype` (e.g. "val2014").
    """
    questions, annotations = _read_json(questions_file), _read_json(annotations_file)
    if "questions" not in questions or "annotations" not in annotations:
        raise ValueError("VQA files must be the official jsons: {'questions': [...]} and {'annotations': [...]}.")
    subtype = questions.get("data_subtype", annotations.get("data_subtype", ""))
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations["annotations"]}
    records = []
    for q in questions["questions"]:
        if q["question_id"] not in answers:
            raise ValueError(f"Question {q['question_id']} has no annotation in {annotations_file}.")
        name = image_name.format(subtype=subtype, image_id=q["image_id"])
        records.append(
            {
                "image_path": Path(image_root) / name,
                "question": q["question"],
                "answers": answers[q["question_id"]],
                "question_id": str(q["question_id"]),
            }
        )
    if not records:
        raise ValueError(f"{questions_file} holds no questions.")
    return _LazyImages(records)


def load_gqa(questions_file: str | os.PathLike, image_root: str | os.PathLike) -> Dataset:
    """GQA evaluation examples from an official `*_balanced_questions.json` (`{question_id: {"imageId",
    "question", "answer", ...}}`, e.g. testdev_balanced_questions.json); images `image_root/<imageId>.jpg`."""
    data = _read_json(questions_file)
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "imageId" in v for v in data.values()):
        raise ValueError(f"{questions_file} is not a GQA balanced questions json ({{qid: {{'imageId', ...}}}}).")
    records = [
        {
            "image_path": Path(image_root) / f"{q['imageId']}.jpg",
            "question": q["question"],
            "answers": [q["answer"]],
            "question_id": str(qid),
        }
        for qid, q in data.items()
    ]
    if not records:
        raise ValueError(f"{questions_file} holds no questions.")
    return _LazyImages(records)


class _ToyScenes(Dataset):
    """Scenes `offset .. offset + size - 1` of a ToyWorld split, rendered once when the dataset is built
    (`render_workers` > 1: in a process pool)."""

    def __init__(
        self,
        size: int,
        split: str = "train",
        seed: int = 0,
        offset: int = 0,
        image_size: int = 112,
        render_workers: int = 1,
    ):
        from groundvlm.recipes.toyworld import ToyWorld
        from groundvlm.recipes.toyworld.world import render_scenes

        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}.")
        self.world = ToyWorld(seed=seed, image_size=image_size, split=split)
        self.size, self.seed, self.offset = size, seed, offset
        self.images, self.objects = render_scenes(self.world, range(offset, offset + size), workers=render_workers)

    def __len__(self) -> int:
        return self.size

    def _scene(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(index)
        from groundvlm.recipes.toyworld.world import Scene

        scene = Scene(self.offset + index, Image.fromarray(self.images[index]), self.objects[index])
        # One generator per example: the same text every time the example is drawn.
        return scene, np.random.default_rng((self.seed, self.offset + index))


class ToyCaptions(_ToyScenes):
    """Toy caption data. `references=0`: training examples `{"image", "text"}` (one caption, as drawn for this
    index); `references=k`: evaluation examples `{"image", "references": k captions, "image_id"}`.

    `located_fraction`: the share of training examples whose caption names each object's coarse location in words
    ("a red star at the top left", `texts.located_caption`), drawn per example; 0 (the default) keeps every caption
    position-free and draws exactly the captions it always did.

    `vqa_fraction`: the share of training examples that are a binding question instead of a caption -- "Question: What
    colour is the star? Answer: red" (a colour question about a shape that occurs once, or a shape question about a
    colour that occurs once; `texts.vqa`): the example's `question` becomes the prompt (in the reference's zero-shot
    VQA prompt of the LLM's type, `CaptionCollator`) and its `text` is the answer, so only the answer is a target
    (the prompt is masked out of the loss, or is the encoder's input, as in BLIP-2's prompted fine-tuning) and
    unprompted captions stay captions. A scene with no such question keeps its caption. Never positions."""

    def __init__(
        self,
        size: int,
        split: str = "train",
        seed: int = 0,
        offset: int = 0,
        references: int = 0,
        image_size: int = 112,
        render_workers: int = 1,
        located_fraction: float = 0.0,
        vqa_fraction: float = 0.0,
    ):
        for name, value in (("located_fraction", located_fraction), ("vqa_fraction", vqa_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}.")
        super().__init__(size, split, seed, offset, image_size, render_workers)
        self.references = references
        self.located_fraction = located_fraction
        self.vqa_fraction = vqa_fraction

    def __getitem__(self, index: int) -> dict:
        from groundvlm.recipes.toyworld import texts

        scene, rng = self._scene(index)
        image = scene.image.convert("RGB")
        if self.references:
            refs = [pre_caption(texts.caption(scene, rng)) for _ in range(self.references)]
            return {"image": image, "references": refs, "image_id": str(self.offset + index)}
        if self.located_fraction and rng.random() < self.located_fraction:
            return {"image": image, "text": pre_caption(texts.located_caption(scene, rng))}
        if self.vqa_fraction and rng.random() < self.vqa_fraction:
            binding = [(q, a) for q, a, kind in texts.vqa(scene, rng) if kind in texts.BINDING_KINDS]
            if binding:
                question, answer = binding[int(rng.integers(len(binding)))]
                return {"image": image, "question": question, "text": answer}
        return {"image": image, "text": pre_caption(texts.caption(scene, rng))}


class ToyVQA(_ToyScenes):
    """Toy VQA evaluation examples: one colour / shape / count question per scene, `answers` = [the answer]."""

    def __getitem__(self, index: int) -> dict:
        from groundvlm.recipes.toyworld import texts

        scene, rng = self._scene(index)
        qas = texts.vqa(scene, rng)
        question, answer, _kind = qas[int(rng.integers(len(qas)))]
        return {
            "image": scene.image.convert("RGB"),
            "question": question,
            "answers": [answer],
            "question_id": str(self.offset + index),
        }


class CaptionCollator:
    """Caption training batch through a `VPGTransProcessor`: empty prompt (as the reference's caption
    pretraining), target = the caption; gives input_ids / attention_mask / pixel_values / labels
    (+ decoder_attention_mask for T5). An example with a `question` is prompted with it in the LLM type's zero-shot
    VQA prompt (`VPGTransProcessor.vqa_prompt`: "Question: {} Answer:" for OPT / LLaMA, "... Short answer:" for
    Flan-T5), one with its own `prompt` uses that; the processor masks prompt tokens out of the labels (a decoder-only
    LLM) or feeds them to the encoder (T5)."""

    def __init__(self, processor, prompt: str = ""):
        self.processor = processor
        self.prompt = prompt

    def __call__(self, examples: Sequence[dict]) -> dict:
        missing = [k for k in ("image", "text") if k not in examples[0]]
        if missing:
            raise KeyError(f"Caption training examples need 'image' and 'text'; missing {missing}.")
        return dict(
            self.processor(
                images=[e["image"] for e in examples],
                text=[
                    self.processor.vqa_prompt(e["question"]) if "question" in e else e.get("prompt", self.prompt)
                    for e in examples
                ],
                text_target=[e["text"] for e in examples],
            )
        )


def caption_texts(data, n: int) -> list[str]:
    """The captions among the first `n` training examples: a binding question's answer (`--toy_vqa_fraction`) is
    not a caption, so the word converter never reads one as caption text."""
    return [example["text"] for example in (data[i] for i in range(min(n, len(data)))) if "question" not in example]


__all__ = ["CaptionCollator", "caption_texts", "ToyCaptions", "ToyVQA", "load_coco_karpathy", "load_gqa", "load_vqa"]


def train_data(args: VPGTransScriptArguments, seed: int, render_workers: int = 1):
    if args.dataset == "toy":
        return ToyCaptions(
            args.toy_train_size,
            split="all",
            seed=seed,
            render_workers=render_workers,
            located_fraction=args.toy_located_caption_fraction,
            vqa_fraction=args.toy_vqa_fraction,
        )
    if not (args.train_file and args.image_root):
        raise ValueError("--dataset coco needs --train_file and --image_root.")
    return load_coco_karpathy(args.train_file, args.image_root, split="train", train=True)


def _subset(data, n):
    if data is None or n is None or n >= len(data):
        return data
    return torch.utils.data.Subset(data, range(n))


def eval_data(args: VPGTransScriptArguments, seed: int):
    """(caption eval data, VQA eval data); toy eval scenes use another seed than training."""
    if args.dataset == "toy":
        n = args.toy_eval_size
        return (
            ToyCaptions(n, split="all", seed=seed + 1000, references=args.toy_references),
            ToyVQA(n, split="all", seed=seed + 2000),
        )
    captions = (
        load_coco_karpathy(args.eval_caption_file, args.image_root, split="val", train=False)
        if args.eval_caption_file
        else None
    )
    vqa = None
    if args.eval_vqa_questions:
        vqa = load_vqa(args.eval_vqa_questions, args.eval_vqa_annotations, args.eval_vqa_image_root)
    elif args.eval_gqa_file:
        vqa = load_gqa(args.eval_gqa_file, args.eval_vqa_image_root)
    return _subset(captions, args.eval_max_examples), _subset(vqa, args.eval_max_examples)
