"""Train PIN (and its Table-1 baselines) on synthetic pasted-object scenes; evaluate zero-shot on held-out categories.

    accelerate launch recipes/pin.py                                  # toy default: 2 CPU cores, ~8 min
    accelerate launch recipes/pin.py --preset gpu                     # = --config toy_gpu: every baseline, larger
    accelerate launch recipes/pin.py --method coop                    # one method
    accelerate launch recipes/pin.py --base_model PATH --objects_dir XPASTE --backgrounds_dir BG20K \
        --eval_format coco --eval_annotations instances_val2017.json --eval_images val2017/

`--eval_format` picks the held-out evaluation set: `toy` (the held-out toy categories), a real set (`voc`, `coco`,
`lvis`, `refcoco`: `groundvlm.recipes.systems.pin.loaders` documents the files; RefCOCO adds P@0.3) or `none`
(validation only). Real sets are loaded before training, so a wrong path fails fast.

Pipeline: load the frozen base VL-LLM (default: the toy caption VLM, asset "vlm-caption") and its processor;
compose the training pools from the training categories only (plus validation images of the same categories
and a test pool of the held-out categories); cache the frozen vision encoder's outputs; for every trained
method run the `Trainer` (Adam, lr 1e-3, weight decay 0, loss on the target span only, the reference
curriculum); then generate boxes for every method and write `comparison.md/json`, `predictions.png` and
`metrics.json` into the run directory. Each method trains in `<output_dir>/<method>/` and resumes there.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoProcessor, Trainer, TrainingArguments, set_seed

from groundvlm.modeling import PinForLocalization
from groundvlm.modeling.modeling_pin import supported_base_classes
from groundvlm.processing import PinProcessor
from groundvlm.recipes.common.arguments import RunArguments, parse_recipe_args
from groundvlm.recipes.common.checkpointing import save_safetensors_atomic, train_resuming
from groundvlm.recipes.systems.pin.loaders import (
    REAL_FORMATS,
    load_eval_samples,
    prediction_records,
    referring_precision,
)
from groundvlm.recipes.pin_baselines import (
    CACHEABLE_METHODS,
    METHODS,
    TRAINED_METHODS,
    PeftBaseline,
    check_method,
    coop_text_prefix,
    trainable_parameter_names,
)
from groundvlm.recipes.pin_data import EpochBlockSampler, PinCollator, PinTrainingSet, build_feature_cache, build_pool
from groundvlm.recipes.pin_eval import (
    comparison_table,
    constant_predictions,
    predict,
    prediction_grid,
    samples_from_pool,
    score,
    write_comparison,
)
from groundvlm.recipes.common.run_dir import prepare_run_dir, write_metrics

logger = logging.getLogger("groundvlm")

DEFAULT_BASE_ASSET = "vlm-caption"


@dataclass
class PinArguments:
    """What PIN trains on, which methods run, and how they are evaluated."""

    base_model: str | None = field(
        default=None,
        metadata={"help": "Folder (or Hub id) of the frozen base VLM + its processor (BLIP-2 / VPGTrans). Default: "
                  "the toy caption VL-LLM, toy asset 'vlm-caption'."},
    )  # fmt: skip
    methods: list[str] = field(
        default_factory=lambda: ["raw", "random", "full_image", "pin"],
        metadata={"help": f"Methods to run and compare, of {', '.join(METHODS)}."},
    )
    method: str | None = field(default=None, metadata={"help": "Run this one method only (overrides methods)."})
    objects_dir: str | None = field(
        default=None, metadata={"help": "X-Paste-style object pool (category folders of RGBA cut-outs, or a json "
                                "index) instead of the toy world's procedural objects."},
    )  # fmt: skip
    backgrounds_dir: str | None = field(default=None, metadata={"help": "Folder of background images (BG-20k)."})
    held_out_categories: list[str] | None = field(
        default=None, metadata={"help": "With objects_dir: categories kept out of training (evaluated zero-shot)."}
    )
    scene_seed: int = field(default=0, metadata={"help": "Seed of the scene composition."})
    train_images: int = field(default=2000, metadata={"help": "Images per training pool (curriculum and main)."})
    val_images: int = field(default=60, metadata={"help": "Validation images (training categories, new images)."})
    test_images: int = field(default=100, metadata={"help": "Test images of the held-out categories."})
    epochs: int = field(default=30, metadata={"help": "Passes over the training pool (the reference: 160 x 60k)."})
    name_reconstruction_fraction: float = field(
        default=0.25, metadata={"help": "Fraction of the passes with exactly curriculum_num_objects objects and "
                                "the loss also on the name (the reference: the first quarter)."},
    )  # fmt: skip
    curriculum_num_objects: int = field(default=3, metadata={"help": "Objects per image in the curriculum pool."})
    referral_probability: float = field(
        default=0.0, metadata={"help": "Share of box-only samples named positionally ('red star on the left')."}
    )
    use_feature_cache: bool = field(
        default=True, metadata={"help": "Cache the frozen vision encoder's outputs (not for vpt_phi / lora_phi)."}
    )
    feature_cache_dtype: str = field(default="float32", metadata={"help": "float32 | float16 | bfloat16"})
    coop_tokens: int = field(default=16, metadata={"help": "CoOp context vectors at the LLM input."})
    coop_slot_token: str | None = field(
        default=None, metadata={"help": "Token whose slots CoOp's vectors fill (default: the tokenizer's unk)."}
    )
    vpt_tokens: int = field(default=100, metadata={"help": "VPT prompt tokens (on F or on the vision encoder)."})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=16)
    lora_target_modules: str | None = field(default=None, metadata={"help": "Regex; default: ViT attention."})
    num_beams: int = field(default=1, metadata={"help": "Evaluation beams (the reference: 3)."})
    max_new_tokens: int = field(default=12)
    eval_batch_size: int = field(default=64)
    grid_columns: int = field(default=8, metadata={"help": "Samples per row of predictions.png."})
    eval_format: Literal["none", "toy", "voc", "coco", "lvis", "refcoco"] = field(
        default="toy", metadata={"help": "Held-out evaluation set: 'toy' (test_images of the held-out categories), "
                                 "a real set 'voc' | 'coco' | 'lvis' | 'refcoco' (images with <= 3 objects; RefCOCO "
                                 "adds P@0.3), or 'none' (validation only)."},
    )  # fmt: skip
    eval_annotations: str | None = field(
        default=None, metadata={"help": "voc: the VOC2007 folder (Annotations/, ImageSets/Main/, JPEGImages/); coco: "
                                "instances_val2017.json; lvis: lvis_v1_val.json; refcoco: refs(unc).p / a json "
                                "refs list / their folder, with instances.json beside it."},
    )  # fmt: skip
    eval_images: str | None = field(
        default=None, metadata={"help": "Image folder of the real set (voc: default <eval_annotations>/JPEGImages; "
                                "lvis: the COCO root with train2017/ and val2017/; refcoco: COCO train2014)."},
    )  # fmt: skip
    eval_split: str | None = field(
        default=None, metadata={"help": "voc: ImageSets/Main/<split>.txt (default test); refcoco: val | testA | "
                                "testB (default testA, as the paper)."},
    )  # fmt: skip
    eval_max_images: int | None = field(default=None, metadata={"help": "Evaluate the first N kept images only."})
    eval_allow_pickle: bool = field(
        default=False, metadata={"help": "Allow reading the pickled refs(unc).p of RefCOCO (plain data only)."}
    )


@dataclass
class PinTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the reference's optimisation defaults: Adam (AdamW, weight decay 0), lr 1e-3,
    constant schedule (the reference's MultiStepLR never fires within 160 epochs), batch 64."""

    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.0)
    lr_scheduler_type: str = field(default="constant")
    per_device_train_batch_size: int = field(default=64)
    logging_steps: float = field(default=10)
    save_steps: float = field(default=200)
    save_total_limit: int | None = field(default=2)
    remove_unused_columns: bool = field(default=False)


class PinTrainer(Trainer):
    """`Trainer` whose checkpoints hold the trainable parameters only (the frozen base is never copied), and
    whose sampler keeps PIN's curriculum order (passes in order, shuffled within)."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return EpochBlockSampler(dataset.pool_size, dataset.epochs, seed=self.args.seed)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        trainable = set(trainable_parameter_names(self.model))
        tensors = {k: v.detach().cpu() for k, v in self.model.state_dict().items() if k in trainable}
        save_safetensors_atomic(tensors, output_dir / "model.safetensors", metadata={"format": "pt"})
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        model = model or self.model
        state = load_file(str(Path(resume_from_checkpoint) / "model.safetensors"))
        trainable = set(trainable_parameter_names(model))
        if set(state) != trainable:
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} holds {sorted(state)[:4]}... but the model trains "
                f"{sorted(trainable)[:4]}...; was it written by another method?"
            )
        model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------- inputs


def resolve_base_model(pin_args: PinArguments, preset: str) -> str:
    """The base VLM folder: `--base_model`, else the toy caption VL-LLM asset (built on first use)."""
    if pin_args.base_model:
        return pin_args.base_model
    from groundvlm.recipes import toyworld

    if DEFAULT_BASE_ASSET not in toyworld.ARTEFACTS:
        raise FileNotFoundError(
            f"The default base VL-LLM is the toy caption VLM (toy asset {DEFAULT_BASE_ASSET!r}: a VPGTrans model "
            "trained on toy captions with a frozen toy ViT). This checkout cannot build it yet "
            f"(groundvlm.recipes.toyworld knows {', '.join(toyworld.ARTEFACTS)}). Build it with the VPGTrans recipe, "
            "or pass --base_model <folder with a BLIP-2/VPGTrans checkpoint and its processor>."
        )
    from groundvlm.recipes.vpgtrans_captioner import build_caption_asset

    preset = "gpu" if preset == "gpu" else "cpu"
    return str(toyworld.toy_asset(DEFAULT_BASE_ASSET, preset, builder=build_caption_asset))


def load_base(path: str, device: torch.device):
    """The frozen base model (class from its config's `architectures`) and its processor."""
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not Path(path).exists() and not looks_like_hub_id:
        raise FileNotFoundError(f"base_model {path!r} is neither a folder nor a Hub id")
    config = AutoConfig.from_pretrained(path)
    classes = supported_base_classes()
    arch = next((a for a in (config.architectures or []) if a in classes), None)
    if arch is None:
        raise ValueError(f"{path}: architectures {config.architectures} hold no PIN base; supported: {sorted(classes)}")
    model = classes[arch].from_pretrained(path).to(device).eval()
    return model, AutoProcessor.from_pretrained(path)


def scene_sources(pin_args: PinArguments, image_size: int, grid_size: int):
    """(train source, val source, held-out source, train categories, held-out categories)."""
    from groundvlm.recipes import toyworld as data

    seed = pin_args.scene_seed
    kwargs = {"image_size": image_size, "grid_size": grid_size}
    if pin_args.objects_dir or pin_args.backgrounds_dir:
        for name in ("objects_dir", "backgrounds_dir"):
            value = getattr(pin_args, name)
            if not value or not Path(value).is_dir() and not Path(value).is_file():
                raise FileNotFoundError(f"--{name} {value!r} does not exist (give both objects_dir and backgrounds_dir)")
        objects = data.FolderObjects(pin_args.objects_dir, seed=seed)
        held = list(pin_args.held_out_categories or [])
        unknown = sorted(set(held) - set(objects.categories))
        if unknown:
            raise ValueError(f"held_out_categories {unknown} are not categories of {pin_args.objects_dir}")
        train = [c for c in objects.categories if c not in held]
        split = data.CategorySplit(train=train, held_out=held)
        kwargs.update(objects=objects, backgrounds=data.FolderBackgrounds(pin_args.backgrounds_dir), category_split=split)
    else:
        split = data.DEFAULT_SPLIT
    make = lambda s, which: data.ToyWorld(s, split=which, **kwargs)  # noqa: E731
    # Distinct seeds: validation images are new images of the training categories.
    return make(seed, "train"), make(seed + 1, "train"), make(seed + 2, "held_out"), split.train, split.held_out


def method_processor(method: str, pin_processor: PinProcessor, pin_args: PinArguments) -> PinProcessor:
    """PIN's processor, or for CoOp a copy whose prompt starts with the context-vector slots."""
    if method != "coop":
        return pin_processor
    tok = pin_processor.tokenizer
    slot = pin_args.coop_slot_token or tok.unk_token
    if slot is None or tok.convert_tokens_to_ids(slot) in (None, tok.unk_token_id) and slot != tok.unk_token:
        raise ValueError(f"CoOp needs a slot token known to the tokenizer (coop_slot_token), got {slot!r}")
    proc = copy.copy(pin_processor)
    proc.text_prefix = coop_text_prefix(slot, pin_args.coop_tokens)
    return proc


def build_model(method: str, base, pin_args: PinArguments, processor: PinProcessor, base_path: str, seed: int = 0):
    """The trainable model of `method` around `base` (which it may change: LoRA injects into the ViT).

    The new parameters (ψ, prompts, LoRA) are drawn after `set_seed(seed)`: the `Trainer` seeds only when it is
    created, after the model exists, and torch's default generator starts from a random seed in every process, so
    without this two runs of one command would start from different inserts (measured: 0.234 vs 0.297 mIoU)."""
    set_seed(seed)
    localizer = PinForLocalization.from_base(base, base_model_name_or_path=base_path,
                                             grid_size=processor.grid_size, image_size=processor.image_size)  # fmt: skip
    if method == "pin" or method == "raw":
        return localizer
    tok = processor.tokenizer
    slot = pin_args.coop_slot_token or tok.unk_token
    return PeftBaseline(
        localizer, method, num_tokens=pin_args.coop_tokens if method == "coop" else pin_args.vpt_tokens,
        coop_slot_id=tok.convert_tokens_to_ids(slot) if method == "coop" else None, lora_r=pin_args.lora_r,
        lora_alpha=pin_args.lora_alpha, lora_target_modules=pin_args.lora_target_modules,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- main


def _methods(pin_args: PinArguments) -> list[str]:
    methods = [pin_args.method] if pin_args.method else list(pin_args.methods)
    if not methods:
        raise ValueError("no method to run: give --method or --methods")
    for m in methods:
        check_method(m)
    return methods


def _with_preset_config(argv: list[str]) -> list[str]:
    """`--preset gpu` without `--config` means the shipped GPU config (recipes/pin/toy_gpu.yaml)."""
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    gpu = any(a == "--preset=gpu" for a in argv) or any(
        a == "--preset" and i + 1 < len(argv) and argv[i + 1] == "gpu" for i, a in enumerate(argv)
    )
    return ["--config", "toy_gpu", *argv] if gpu and not has_config else argv


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns {method: results} (also written to the run directory)."""
    argv = _with_preset_config(list(sys.argv[1:] if argv is None else argv))
    run_args, pin_args, training_args = parse_recipe_args(
        (RunArguments, PinArguments, PinTrainingArguments), argv=argv, recipe="pin"
    )
    methods = _methods(pin_args)
    if pin_args.feature_cache_dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"feature_cache_dtype must be float32, float16 or bfloat16, got {pin_args.feature_cache_dtype!r}")
    run_dir = prepare_run_dir(training_args.output_dir, run_args, pin_args, training_args)
    device = training_args.device
    base_path = resolve_base_model(pin_args, run_args.preset)
    base, base_processor = load_base(base_path, device)
    processor = PinProcessor.from_base_processor(base_processor)
    size = processor.image_size

    train_src, val_src, test_src, train_cats, held_cats = scene_sources(pin_args, size, processor.grid_size)
    name_epochs = round(pin_args.epochs * pin_args.name_reconstruction_fraction)
    logger.info("Composing %d + %d training scenes of %d categories", pin_args.train_images,
                pin_args.train_images if name_epochs else 0, len(train_cats))  # fmt: skip
    main_pool = build_pool(train_src, pin_args.train_images, train_cats, progress=True)
    curriculum_pool = (
        build_pool(train_src, pin_args.train_images, train_cats, num_objects=pin_args.curriculum_num_objects,
                   start=10**8, progress=True)  # fmt: skip
        if name_epochs else None
    )
    val_samples = samples_from_pool(build_pool(val_src, pin_args.val_images, train_cats))
    if pin_args.eval_format in REAL_FORMATS:
        test_samples = load_eval_samples(
            pin_args.eval_format, pin_args.eval_annotations, pin_args.eval_images, size, split=pin_args.eval_split,
            max_images=pin_args.eval_max_images, allow_pickle=pin_args.eval_allow_pickle,
        )  # fmt: skip
    elif pin_args.eval_format == "toy":
        test_samples = samples_from_pool(build_pool(test_src, pin_args.test_images, held_cats))
    else:
        test_samples = []
    eval_sets = [("val", val_samples)] + ([("held_out", test_samples)] if test_samples else [])

    def score_split(split, preds, samples):
        result = score(preds, samples, size)
        if split == "held_out" and pin_args.eval_format == "refcoco":
            result.update(referring_precision(preds, samples))
        return result

    cache_dtype = getattr(torch, pin_args.feature_cache_dtype)
    features = None
    if pin_args.use_feature_cache and any(m in TRAINED_METHODS and m in CACHEABLE_METHODS for m in methods):
        encoder = PinForLocalization.from_base(base)
        features = {
            name: build_feature_cache(encoder, processor.image_processor, pool.images, dtype=cache_dtype, progress=True)
            for name, pool in (("main", main_pool), ("curriculum", curriculum_pool)) if pool is not None
        }  # fmt: skip
        del encoder

    results, predictions = {}, {}
    for method in methods:
        logger.info("=== %s ===", method)
        entry: dict = {}
        proc = method_processor(method, processor, pin_args)
        if method in ("random", "full_image"):
            for split, samples in eval_sets:
                preds = constant_predictions(method, samples, main_pool.boxes(), size, training_args.seed)
                entry[split] = score_split(split, preds, samples)
            predictions[method] = preds
            entry["trainable_parameters"] = 0
            results[method] = entry
            continue
        model_base = base if method in ("raw", "pin") else load_base(base_path, device)[0]
        model = build_model(method, model_base, pin_args, proc, base_path, seed=training_args.seed)
        if method in TRAINED_METHODS:
            model.train()
            entry["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            cached = features is not None and method in CACHEABLE_METHODS
            dataset = PinTrainingSet(
                main_pool, pin_args.epochs, curriculum_pool=curriculum_pool, name_reconstruction_epochs=name_epochs,
                seed=training_args.seed, main_features=features["main"] if cached else None,
                curriculum_features=features.get("curriculum") if cached else None,
                referral_probability=pin_args.referral_probability,
            )  # fmt: skip
            args = copy.deepcopy(training_args)
            args.output_dir = str(run_dir / method)
            args.num_train_epochs = 1  # one pass over PinTrainingSet = `epochs` passes over the pool
            trainer = PinTrainer(model=model, args=args, train_dataset=dataset, data_collator=PinCollator(proc))
            start = time.perf_counter()
            output = train_resuming(trainer, resume=run_args.resume)
            entry["train_seconds"] = time.perf_counter() - start
            entry["train_loss"] = output.training_loss
            entry["train_samples"] = len(dataset)
            if method == "pin":
                model.save_pretrained(run_dir / "pin" / "final")
                proc.save_pretrained(run_dir / "pin" / "final")
        else:
            entry["trainable_parameters"] = 0
        use_pin = {"pin": True, "raw": False}.get(method)
        for split, samples in eval_sets:
            preds = predict(model, proc, samples, batch_size=pin_args.eval_batch_size, num_beams=pin_args.num_beams,
                            max_new_tokens=pin_args.max_new_tokens, use_pin=use_pin, progress=True)  # fmt: skip
            entry[split] = score_split(split, preds, samples)
        predictions[method] = preds
        results[method] = entry
        write_metrics(run_dir, method, {k: v for k, v in entry.items()})

    shown = test_samples or val_samples  # the samples of the last evaluated split, which `predictions` hold
    where = {"toy": "held-out categories", "none": "validation"}.get(pin_args.eval_format, pin_args.eval_format)
    title = f"PIN comparison, {where} ({len(shown)} prompts), base {base_path}"
    write_comparison(run_dir, results, title)
    prediction_grid(shown, predictions, run_dir / "predictions.png", columns=pin_args.grid_columns)
    if pin_args.eval_format in REAL_FORMATS:  # boxes in pixels of the original images
        records = {m: prediction_records(test_samples, p) for m, p in predictions.items()}
        path = run_dir / f"predictions_{pin_args.eval_format}.json"
        path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    print(comparison_table(results, title))
    for method, entry in results.items():
        if "p@0.3" in entry.get("held_out", {}):
            print(f"RefCOCO {method}: P@0.3 = {entry['held_out']['p@0.3']:.3f}")
    print(f"wrote {run_dir / 'comparison.md'}, {run_dir / 'comparison.json'}, {run_dir / 'predictions.png'}")
    return results


if __name__ == "__main__":
    main()
