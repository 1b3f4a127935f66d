"""VPGTrans's training: the LAVIS optimiser and schedule in a `Trainer`, text replay for an unfrozen toy LLM, and
the zero-shot evaluation after every inner epoch.

Optimiser as the LAVIS runner: AdamW (0.9, 0.999), weight decay 0.05 except parameters with ndim < 2 or
"bias"/"ln"/"bn" in the name; no gradient clipping by default. After every (inner) epoch the model is evaluated
zero-shot and the curve is written to the run directory's `metrics.json` under `eval_curve`
(`{"epoch": [...], "cider": [...], "vqa_accuracy": [...]}`), which `groundvlm.recipes.systems.vpgtrans.speedup`
turns into the paper's speed-up table and Fig. 7-style plot.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from groundvlm.modeling.vpgtrans_transfer import guess_tokenizer_family
from groundvlm.recipes.common.run_dir import METRICS_NAME, write_metrics
from groundvlm.recipes.systems.vpgtrans.arguments import VPGTransTrainingArguments
from groundvlm.recipes.systems.vpgtrans.evaluation import evaluate_vl_llm
from groundvlm.recipes.toyworld import PRESETS, SEED
from groundvlm.recipes.toyworld.build import lm_corpus_memo
from groundvlm.recipes.toyworld.corpus import lookup_pairs
from groundvlm.recipes.toyworld.lms import collate, encode_examples

logger = logging.getLogger("groundvlm")

CURVE_NAME = "eval_curve"


def lavis_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups as the LAVIS runner: no decay for ndim < 2 or names containing
    "bias", "ln" or "bn" (the literal substring test of the reference), `weight_decay` for the rest."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "bias" in name or "ln" in name or "bn" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def inner_epoch_cosine_lr(
    step: int,
    steps_per_epoch: int,
    num_epochs: int,
    init_lr: float,
    min_lr: float,
    warmup_steps: int = 0,
    warmup_lr: float | None = None,
) -> float:
    """LAVIS `LinearWarmupCosineLRScheduler` at optimizer step `step` (lavis/common/optims.py).

    Inner epoch e = step // steps_per_epoch. Epoch 0: linear warm-up `min(init, warmup_lr + (init - warmup_lr)
    * step / max(warmup_steps, 1))` (warmup_lr None = init_lr: no warm-up). Epoch e >= 1:
    `min_lr + (init_lr - min_lr) * 0.5 * (1 + cos(pi * e / num_epochs))`, constant within the epoch.
    """
    epoch = step // steps_per_epoch
    if epoch == 0:
        start = init_lr if warmup_lr is None else warmup_lr
        return min(init_lr, start + (init_lr - start) * step / max(warmup_steps, 1))
    return min_lr + (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * epoch / num_epochs))


class VPGTransTrainer(Trainer):
    """`Trainer` with the LAVIS optimiser, the stage's schedule, and optional text replay for the LLM."""

    args: VPGTransTrainingArguments

    def __init__(self, *args, stage: str, replay=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.replay = replay
        self.steps_per_epoch = None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = lavis_param_groups(model or self.model, self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.base_lr(),
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def base_lr(self) -> float:
        if self.stage == "stage1":
            return self.args.learning_rate * self.args.stage1_lr_multiplier
        return self.args.learning_rate

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            a = self.args
            self.steps_per_epoch = a.iters_per_inner_epoch or max(
                1, math.ceil(num_training_steps / self.args.num_train_epochs)
            )
            num_epochs = max(1, math.ceil(num_training_steps / self.steps_per_epoch))
            init = self.base_lr()
            if self.stage == "stage1":
                # VPGTrans stage 1: init_lr = min_lr = 5x base, no warm-up -> constant.
                lr_at = lambda step: init
            else:
                lr_at = lambda step: inner_epoch_cosine_lr(
                    step, self.steps_per_epoch, num_epochs, init, a.min_lr, a.warmup_steps, a.warmup_lr
                )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step) / init)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self.replay is None or self.args.text_replay_weight <= 0:
            return out
        loss, outputs = out if return_outputs else (out, None)
        batch = {k: v.to(loss.device) for k, v in self.replay.next_batch().items()}
        if self.replay.processor is not None:
            # Behind an image: the replayed text is scored after the visual prompts of *other* images of the batch,
            # so the LM learns that its text (boxes included) survives an image prefix, but not to read positions
            # from the image (the texts come from other scenes).
            pixel_values = inputs["pixel_values"]
            pick = self.replay.unrelated_images(pixel_values.shape[0], batch["input_ids"].shape[0])
            replay_loss = model(**batch, pixel_values=pixel_values[pick.to(pixel_values.device)]).loss
        else:
            lm = model.module.language_model if hasattr(model, "module") else model.language_model
            replay_loss = lm(**batch).loss
        loss = loss + self.args.text_replay_weight * replay_loss
        return (loss, outputs) if return_outputs else loss


class TextReplay:
    """Batches of the LLM's own pretraining text (toy corpus), drawn with replacement from a seeded generator.

    Text only (`processor=None`): LM batches as in its pretraining. Behind an image (`processor` given): each text
    is the target of an empty prompt after the `<image>` placeholders, as a caption is, and the trainer supplies
    the visual prompts of unrelated images (`unrelated_images`). With `lookups` (behind an image only) a share
    `lookup_fraction` of every batch are (prompt, answer) in-context lookups (`toyworld.corpus.lookup_pairs`): the
    prompt is masked out of the loss as a question is, so the LM learns to answer from the text in front.
    """

    def __init__(
        self,
        family: str,
        tokenizer,
        corpus: list[str],
        batch_size: int,
        seed: int = 0,
        processor=None,
        lookups: list[tuple[str, str]] | None = None,
        lookup_fraction: float = 0.0,
    ):
        if not corpus:
            raise ValueError("Text replay needs a non-empty corpus.")
        if not 0.0 <= lookup_fraction <= 1.0:
            raise ValueError(f"lookup_fraction must lie in [0, 1], got {lookup_fraction}.")
        if lookup_fraction and (processor is None or not lookups):
            raise ValueError(
                "Lookup replay trains answers behind an image prompt: it needs text_replay_behind_image and a "
                "non-empty list of lookups."
            )
        self.corpus = corpus
        self.processor = processor
        if processor is None:
            self.examples = encode_examples(family, tokenizer, corpus, seed=seed)
            self._collate = lambda ex: collate(family, tokenizer, ex)
        self.batch_size = batch_size
        self.lookups = lookups or []
        self.lookup_rows = round(lookup_fraction * batch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.processor is None:
            idx = torch.randint(0, len(self.examples), (self.batch_size,), generator=self.generator).tolist()
            return self._collate([self.examples[i] for i in idx])
        n_text = self.batch_size - self.lookup_rows
        idx = torch.randint(0, len(self.corpus), (n_text,), generator=self.generator).tolist()
        asked = torch.randint(0, max(1, len(self.lookups)), (self.lookup_rows,), generator=self.generator).tolist()
        prompts = [""] * n_text + [self.lookups[i][0] for i in asked]
        targets = [self.corpus[i] for i in idx] + [self.lookups[i][1] for i in asked]
        return dict(self.processor(text=prompts, text_target=targets))

    def unrelated_images(self, n_images: int, n_rows: int) -> torch.Tensor:
        """Indices of batch images to put in front of `n_rows` replayed texts (drawn from other scenes)."""
        return torch.randint(0, n_images, (n_rows,), generator=self.generator)


def toy_replay(training_args: VPGTransTrainingArguments, processor, preset: str, seed: int) -> TextReplay:
    """Text replay over the toy LLM's own pretraining corpus (the toy-asset preset's), with
    `text_replay_lookup_fraction` of each batch in-context lookups of as many scenes (PIN's with up to
    `text_replay_lookup_listed` objects listed)."""
    scenes = PRESETS[preset].corpus_scenes
    corpus = lm_corpus_memo(scenes, SEED)
    fraction = training_args.text_replay_lookup_fraction
    tokenizer = processor.tokenizer
    return TextReplay(
        guess_tokenizer_family(tokenizer),
        tokenizer,
        corpus,
        training_args.text_replay_batch_size,
        seed,
        processor=processor if training_args.text_replay_behind_image else None,
        lookups=lookup_pairs(scenes, SEED, max_listed=training_args.text_replay_lookup_listed) if fraction else None,
        lookup_fraction=fraction,
    )


def read_curve(run_dir) -> dict:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get(CURVE_NAME, {})


class EpochEvalCallback(TrainerCallback):
    """Zero-shot eval at the end of every inner epoch -> `metrics.json[eval_curve]` (epoch numbers from 1)."""

    def __init__(self, trainer: VPGTransTrainer, processor, caption_data, vqa_data, settings, run_dir, dataset: str):
        self.trainer, self.processor, self.settings, self.run_dir = trainer, processor, settings, run_dir
        self.caption_data, self.vqa_data = caption_data, vqa_data
        self.normalize_references = dataset == "toy"  # toy answers are single words, stored un-normalised

    def on_step_end(self, args, state, control, model=None, **kwargs):
        per_epoch = self.trainer.steps_per_epoch
        if per_epoch and state.global_step % per_epoch == 0:
            self.evaluate(model, state.global_step // per_epoch, state.global_step)

    def evaluate(self, model, epoch: int, step: int) -> dict:
        metrics = evaluate_vl_llm(
            model, self.processor, self.caption_data, self.vqa_data, self.settings, self.normalize_references
        )
        curve = {k: v for k, v in read_curve(self.run_dir).items()}
        keep = [i for i, e in enumerate(curve.get("epoch", [])) if e < epoch]  # a resumed run rewrites later epochs
        curve = {k: [v[i] for i in keep] for k, v in curve.items() if isinstance(v, list)}
        for key, value in [("epoch", epoch), ("step", step)] + [
            (k, v) for k, v in metrics.items() if isinstance(v, float)
        ]:
            curve.setdefault(key, []).append(value)
        write_metrics(self.run_dir, CURVE_NAME, curve)
        logger.info("epoch %d (step %d): %s", epoch, step, metrics)
        return metrics
