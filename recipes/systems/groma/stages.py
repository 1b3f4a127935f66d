"""Run one stage of the Groma recipe: build or load the model, its data, train with resuming, save `final/`."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import datasets
from torch.utils.data import Dataset

from groundvlm.recipes.common.checkpointing import save_pretrained_once, train_resuming
from groundvlm.recipes.toyworld import ToyWorld

from . import data, evaluation, models
from .training import DetectionTrainer, GromaSFTTrainer

logger = logging.getLogger("groundvlm")


class Samples(Dataset):
    def __init__(self, samples: list[dict]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage


def start_model(args, stage: str, run_dir: Path, preset: str, seed: int):
    """The model a stage starts from: `model_name_or_path`, else the previous stage's final folder; det (with
    neither) builds a new Groma from `vision_model` + `llm` (default: the toy world's)."""
    previous = {"align": "det", "instruct": "align", "eval": "instruct"}.get(stage)
    path = args.model_name_or_path or (stage_dir(run_dir, previous) / "final" if previous else None)
    if path is not None:
        return models.load_groma(path)
    sizes = dict(models.TOY_GROMA_SIZES[preset] if args.proposer_sizes is None else args.proposer_sizes)
    if args.image_size:
        sizes["image_size"] = args.image_size
    if args.vision_model or args.llm:
        if not (args.vision_model and args.llm):
            raise ValueError("a new Groma needs both --vision_model (DINOv2) and --llm (Llama + tokenizer)")
        return models.build_groma(args.vision_model, args.llm, seed, region_box_quirk=args.region_box_quirk, **sizes)
    model, processor = models.build_toy_groma(preset, seed)
    model.config.region_box_quirk = args.region_box_quirk
    model.region_encoder.box_quirk = args.region_box_quirk
    return model, processor


def toy_world(args, offset: int = 0) -> ToyWorld:
    return ToyWorld(args.scene_seed + offset, split="train", num_objects=tuple(args.toy_num_objects))


def detection_samples(args) -> list[dict]:
    samples = data.toy_detection(toy_world(args), args.toy_train_scenes) if args.toy_train_scenes else []
    if len(args.det_images) != len(args.det_annotations):
        raise ValueError("give one --det_images folder per --det_annotations json")
    sources = args.det_sources or ["coco"] * len(args.det_annotations)
    for ann, images, source in zip(args.det_annotations, args.det_images, sources):
        samples += data.load_coco_detection(ann, images, source)
    return samples


def chat_samples(args, stage: str) -> list[dict]:
    samples = data.toy_chats(toy_world(args), args.toy_train_scenes, stage) if args.toy_train_scenes else []
    if args.refcoco_refs:
        samples += data.load_refcoco(args.refcoco_refs, args.refcoco_instances, args.refcoco_images, split="train",
                                     allow_pickle=args.allow_pickle, train=True)  # fmt: skip
    if args.flickr_root:
        samples += data.load_flickr30k_entities(args.flickr_root, args.flickr_images)
    if args.vg_regions:
        samples += data.load_vg_regions(args.vg_regions, args.vg_images, max_regions=1 if stage == "align" else 3)
    for path in args.conversations:
        samples += data.load_conversations(path, args.conversation_images)
    return samples


def run_training_stage(
    stage: str, args, training_args, run_dir: Path, preset: str, resume, max_minutes: float | None = None
) -> dict:
    """Train `stage` (det / align / instruct) into <run_dir>/<stage>/ and save <run_dir>/<stage>/final."""
    out_dir = stage_dir(run_dir, stage)
    model, processor = start_model(args, stage, run_dir, preset, training_args.seed)
    train_llm = stage == "instruct" and not args.freeze_llm
    models.freeze_for_stage(model, stage, train_llm=train_llm and not args.use_lora)
    if stage != "det" and args.shuffle_regions:
        model.region_permutation = models.RandomRegionOrder(training_args.seed)
    if stage == "instruct" and args.use_lora and train_llm:
        models.apply_lora(model, args.lora_r, args.lora_alpha, args.lora_target_modules)
    stage_args = copy.deepcopy(training_args)
    stage_args.output_dir = str(out_dir)
    entry = {"trainable_parameters": models.trainable_parameters(model)}
    start = time.perf_counter()
    if stage == "det":
        samples = detection_samples(args)
        trainer = DetectionTrainer(
            model=model, args=stage_args, train_dataset=Samples(samples), sources=[s["source"] for s in samples],
            data_collator=data.DetectionCollator(processor.image_processor),
        )  # fmt: skip
    else:
        template = args.template if args.template != "auto" else ("default" if stage == "align" else "llava")
        samples = chat_samples(args, stage)
        keys = ("image", "task", "messages", "refer_boxes", "ground_boxes")
        # trl wants a `datasets.Dataset`; images are stored encoded and decoded back to PIL per sample
        dataset = datasets.Dataset.from_list([{k: s[k] for k in keys} for s in samples])
        trainer = GromaSFTTrainer(
            model=model, args=stage_args, train_dataset=dataset, processing_class=processor,
            data_collator=data.GromaChatCollator(processor, template),
        )  # fmt: skip
    logger.info("%s: %d samples, %d trainable parameters", stage, len(samples), entry["trainable_parameters"])
    output = train_resuming(trainer, resume=resume, max_minutes=max_minutes)
    if stage == "instruct" and args.use_lora:
        models.merge_lora(model)
    save_pretrained_once(out_dir / "final", model, processor)
    entry.update(train_loss=output.training_loss, train_seconds=time.perf_counter() - start, train_samples=len(samples))
    return entry


def eval_sets(args) -> dict[str, list[dict]]:
    sets = data.toy_eval_sets(toy_world(args, offset=1), args.toy_eval_scenes) if args.toy_eval_scenes else {}
    cap = args.eval_max_samples
    if args.refcoco_refs:
        sets["rec"] = data.load_refcoco(args.refcoco_refs, args.refcoco_instances, args.refcoco_images,
                                        split=args.refcoco_split, allow_pickle=args.allow_pickle, max_samples=cap)  # fmt: skip
    if args.flickr_root:
        sets["grounded_caption"] = data.load_flickr30k_entities(args.flickr_root, args.flickr_images, train=False)[:cap]
    if args.vg_regions:
        sets["region_caption"] = data.load_vg_regions(args.vg_regions, args.vg_images, train=False)[:cap]
    if args.lvis_annotations:
        sets["lvis"] = data.load_lvis(args.lvis_annotations, args.lvis_images, max_samples=cap)
    return sets


def run_eval(args, model, processor, sets: dict[str, list[dict]], device) -> dict:
    model.to(device).eval()
    runners = {
        "proposer": lambda s: evaluation.evaluate_proposer(
            model, processor, s, args.proposer_topk, args.eval_batch_size
        ),
        "rec": lambda s: evaluation.evaluate_rec(model, processor, s, args.eval_batch_size),
        "grounded_caption": lambda s: evaluation.evaluate_grounded_captions(model, processor, s, args.eval_batch_size),
        "region_caption": lambda s: evaluation.evaluate_region_captions(model, processor, s, args.eval_batch_size),
        "lvis": lambda s: evaluation.evaluate_lvis_ground(model, processor, s, args.eval_batch_size),
    }
    results = {}
    for task in args.eval_tasks:
        key = "det" if task == "proposer" else task
        if task not in runners:
            raise ValueError(f"unknown eval task {task!r}; expected one of {sorted(runners)}")
        if sets.get(key):
            results.update(runners[task](sets[key]))
    return results
