"""PIN's training loop: a `Trainer` that saves only the trainable parameters, and the run over every method.

For every trained method the `Trainer` runs with the reference's optimisation (Adam, lr 1e-3, weight decay 0,
loss on the target span only, the reference curriculum); then every method generates boxes on the validation
and held-out sets. Each method trains in `<output_dir>/<method>/` and resumes there.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import Trainer

from groundvlm.modeling import PinForLocalization
from groundvlm.processing import PinProcessor
from groundvlm.recipes.common.checkpointing import save_pretrained_once, save_safetensors_atomic, train_resuming
from groundvlm.recipes.common.run_dir import write_metrics
from groundvlm.recipes.systems.pin.arguments import PinArguments, PinTrainingArguments
from groundvlm.recipes.systems.pin.baselines import CACHEABLE_METHODS, TRAINED_METHODS, trainable_parameter_names
from groundvlm.recipes.systems.pin.data import (
    EpochBlockSampler,
    FreshSceneSet,
    PinCollator,
    PinTrainingSet,
    build_feature_cache,
    build_pool,
    scene_sources,
)
from groundvlm.recipes.systems.pin.evaluation import constant_predictions, predict, samples_from_pool, score
from groundvlm.recipes.systems.pin.loaders import REAL_FORMATS, load_eval_samples, referring_precision
from groundvlm.recipes.systems.pin.models import build_model, load_base, method_processor, resolve_base_model

logger = logging.getLogger("groundvlm")


class PinTrainer(Trainer):
    """`Trainer` whose checkpoints hold the trainable parameters only (the frozen base is never copied), and
    whose sampler keeps PIN's curriculum order (passes in order, shuffled within; fresh scenes in order)."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, FreshSceneSet):  # every item is a new scene: in order, curriculum first
            return torch.utils.data.SequentialSampler(dataset)
        return EpochBlockSampler(dataset.pool_size, dataset.epochs, seed=self.args.seed)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = Path(output_dir or self.args.output_dir)
        trainable = set(trainable_parameter_names(self.model))
        tensors = {k: v.detach().cpu() for k, v in self.model.state_dict().items() if k in trainable}
        save_safetensors_atomic(tensors, output_dir / "model.safetensors", metadata={"format": "pt"})
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        state = load_file(str(Path(resume_from_checkpoint) / "model.safetensors"))
        trainable = set(trainable_parameter_names(model))
        if set(state) != trainable:
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} holds {sorted(state)[:4]}... but the model trains "
                f"{sorted(trainable)[:4]}...; was it written by another method?"
            )
        model.load_state_dict(state, strict=False)


@dataclass
class PinRun:
    """What `run_methods` produced: per-method results and the predictions on the last evaluated split."""

    results: dict[str, dict]
    predictions: dict[str, list[dict]]
    shown: list  # the samples of the last evaluated split, which `predictions` hold
    test_samples: list
    base_path: str


def run_methods(
    run_args, pin_args: PinArguments, training_args: PinTrainingArguments, run_dir: Path, methods: list[str]
) -> PinRun:
    """Load the base, compose the pools, train every trained method in `<run_dir>/<method>/` (resuming there) and
    evaluate every method on validation and the held-out set; each method's entry also goes to `metrics.json`."""
    device = training_args.device
    base_path = resolve_base_model(pin_args, run_args.preset)
    base, base_processor = load_base(base_path, device)
    processor = PinProcessor.from_base_processor(base_processor, grid_size=pin_args.grid_size)
    size = processor.image_size

    train_src, val_src, test_src, train_cats, held_cats = scene_sources(pin_args, size, pin_args.grid_size)
    name_epochs = round(pin_args.epochs * pin_args.name_reconstruction_fraction)
    fresh = pin_args.fresh_scenes
    fresh_samples = pin_args.train_images * pin_args.epochs  # every one a new scene when `fresh`
    if fresh:
        logger.info(
            "Fresh scenes: %d training samples of %d categories, each a new composition", fresh_samples, len(train_cats)
        )
    else:
        logger.info(
            "Composing %d + %d training scenes of %d categories",
            pin_args.train_images,
            pin_args.train_images if name_epochs else 0,
            len(train_cats),
        )
    # With fresh scenes the pool only feeds the random baseline's box distribution.
    main_pool = build_pool(
        train_src, min(pin_args.train_images, 2000) if fresh else pin_args.train_images, train_cats, progress=True
    )
    curriculum_pool = (
        build_pool(
            train_src,
            pin_args.train_images,
            train_cats,
            num_objects=pin_args.curriculum_num_objects,
            start=10**8,
            progress=True,
        )
        if name_epochs and not fresh
        else None
    )
    val_samples = samples_from_pool(build_pool(val_src, pin_args.val_images, train_cats)) if pin_args.val_images else []
    if pin_args.eval_format in REAL_FORMATS:
        test_samples = load_eval_samples(
            pin_args.eval_format,
            pin_args.eval_annotations,
            pin_args.eval_images,
            size,
            split=pin_args.eval_split,
            max_images=pin_args.eval_max_images,
            allow_pickle=pin_args.eval_allow_pickle,
        )
    elif pin_args.eval_format == "toy" and pin_args.test_images:
        test_samples = samples_from_pool(build_pool(test_src, pin_args.test_images, held_cats))
    else:
        test_samples = []
    eval_sets = ([("val", val_samples)] if val_samples else []) + ([("held_out", test_samples)] if test_samples else [])

    def score_split(split, preds, samples):
        result = score(preds, samples, size)
        if split == "held_out" and pin_args.eval_format == "refcoco":
            result.update(referring_precision(preds, samples))
        return result

    cache_dtype = getattr(torch, pin_args.feature_cache_dtype)
    features = None
    if (
        pin_args.use_feature_cache
        and not fresh
        and any(m in TRAINED_METHODS and m in CACHEABLE_METHODS for m in methods)
    ):
        encoder = PinForLocalization.from_base(base, grid_size=processor.grid_size, image_size=size)
        features = {
            name: build_feature_cache(encoder, processor.image_processor, pool.images, dtype=cache_dtype, progress=True)
            for name, pool in (("main", main_pool), ("curriculum", curriculum_pool))
            if pool is not None
        }
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
            if fresh:
                dataset = FreshSceneSet(
                    train_src,
                    fresh_samples,
                    train_cats,
                    curriculum_samples=round(fresh_samples * pin_args.name_reconstruction_fraction),
                    curriculum_num_objects=pin_args.curriculum_num_objects,
                    seed=training_args.seed,
                    referral_probability=pin_args.referral_probability,
                )
            else:
                dataset = PinTrainingSet(
                    main_pool,
                    pin_args.epochs,
                    curriculum_pool=curriculum_pool,
                    name_reconstruction_epochs=name_epochs,
                    seed=training_args.seed,
                    main_features=features["main"] if cached else None,
                    curriculum_features=features.get("curriculum") if cached else None,
                    referral_probability=pin_args.referral_probability,
                )
            args = copy.deepcopy(training_args)
            args.output_dir = str(run_dir / method)
            args.num_train_epochs = 1  # one pass over PinTrainingSet = `epochs` passes over the pool
            trainer = PinTrainer(model=model, args=args, train_dataset=dataset, data_collator=PinCollator(proc))
            start = time.perf_counter()
            output = train_resuming(trainer, resume=run_args.resume, max_minutes=run_args.max_train_minutes)
            entry["train_seconds"] = time.perf_counter() - start
            entry["train_loss"] = output.training_loss
            entry["train_samples"] = len(dataset)
            if method == "pin":
                # ‖π‖ next to nothing else tells whether PIN drowned the image (a π far above the vision tokens'
                # norm makes the Q-Former's attention position-driven: the "blinding" failure on the toy base).
                with torch.no_grad():
                    entry["pi_norm"] = float(model.positional_insert().float().norm(dim=-1).mean())
                save_pretrained_once(run_dir / "pin" / "final", model, proc)
        else:
            entry["trainable_parameters"] = 0
        use_pin = {"pin": True, "raw": False}.get(method)
        for split, samples in eval_sets:
            preds = predict(
                model,
                proc,
                samples,
                batch_size=pin_args.eval_batch_size,
                num_beams=pin_args.num_beams,
                max_new_tokens=pin_args.max_new_tokens,
                use_pin=use_pin,
                progress=True,
            )
            entry[split] = score_split(split, preds, samples)
        predictions[method] = preds
        results[method] = entry
        write_metrics(run_dir, method, {k: v for k, v in entry.items()})
    return PinRun(results, predictions, test_samples or val_samples, test_samples, base_path)
