"""VPGTrans recipe: transfer a BLIP-2 visual prompt generator (VPG) to a new LLM, plus the paper's baselines.

    accelerate launch recipes/vpgtrans.py --stage converter --config converter_opt_small_to_base
    accelerate launch recipes/vpgtrans.py --stage stage1 --config stage1 --init_model runs/.../converter/model
    accelerate launch recipes/vpgtrans.py --stage stage2 --config stage2 --init_model runs/.../stage1/model
    accelerate launch recipes/vpgtrans.py --stage tfs|inherit|qformer_pretrain|eval ...

Stages (spec A2-A4; "VPG" = ViT + Q-Former + query tokens):

| stage              | starts from                                     | trains                                         |
|--------------------|-------------------------------------------------|------------------------------------------------|
| `converter`        | source VL-LLM + target LLM                      | word converter (Linear, 1-cos, SGD 5.0); saves it and the target VL-LLM with the merged projector (`<out>/model`) |
| `qformer_pretrain` | a ViT                                           | Q-Former with ITC + ITM + ITG (BLIP-2 stage 1) |
| `stage1`           | `<converter out>/model`                         | projector only, 5x lr constant, 1 epoch, no warm-up |
| `stage2`           | `<stage1 out>/model`                            | Q-Former, query tokens, ViT post-LN (`ln_vision`), projector; cosine per inner epoch |
| `tfs`              | ViT + LLM (+ optionally a pretrained Q-Former)  | as stage2, Q-Former and projector new          |
| `inherit`          | source VL-LLM + target LLM                      | as stage2, VPG inherited, projector random      |
| `eval`             | `--init_model`                                  | nothing: caption CIDEr + VQA accuracy           |

The ViT and the LLM are frozen in every stage (the ViT also kept in eval mode, as LAVIS `disabled_train`),
unless `--unfreeze_lm` (toy captioner only: a tiny toy LM needs to adapt; `--text_replay_weight` then mixes in
its pretraining text so it keeps its language). Optimiser as the LAVIS runner: AdamW (0.9, 0.999), weight decay
0.05 except parameters with ndim < 2 or "bias"/"ln"/"bn" in the name; no gradient clipping by default.

After every (inner) epoch the model is evaluated zero-shot and the curve is written to the run directory's
`metrics.json` under `eval_curve` (`{"epoch": [...], "cider": [...], "vqa_accuracy": [...]}`), which
`recipes/vpgtrans_speedup.py` turns into the paper's speed-up table and Fig. 7-style plot. The trained model
and its processor are saved to `<output_dir>/model`.

Data: `--dataset toy` (default; scenes of the toy world, toy base models from `toy_asset`, built on demand)
or `--dataset coco` with `--train_file` (LAVIS / Karpathy COCO json), `--image_root`, and for evaluation
`--eval_caption_file`, `--eval_vqa_questions` + `--eval_vqa_annotations` + `--eval_vqa_image_root`
(VQAv2 / OK-VQA) or `--eval_gqa_file` + `--eval_vqa_image_root` (GQA).
"""

from __future__ import annotations

import json
import logging
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from groundvlm.modeling import VPGTransConfig, VPGTransModel
from groundvlm.modeling.vpgtrans_transfer import (
    build_target_model,
    input_word_embeddings,
    pair_caption_tokens,
    train_word_converter,
)
from groundvlm.processing import VPGTransProcessor
from groundvlm.recipes.common.arguments import RunArguments, parse_recipe_args
from groundvlm.recipes.common.checkpointing import save_safetensors_atomic, train_resuming
from groundvlm.recipes.common.run_dir import METRICS_NAME, prepare_run_dir, write_metrics
from groundvlm.recipes.vpgtrans_data import (
    CaptionCollator,
    ToyCaptions,
    ToyVQA,
    load_coco_karpathy,
    load_gqa,
    load_vqa,
)
from groundvlm.recipes.vpgtrans_eval import GenerationSettings, evaluate_vl_llm
from groundvlm.recipes.vpgtrans_qformer import (
    QFORMER_WEIGHTS_NAME,
    QFormerPretrainer,
    load_pretrained_qformer,
)
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    Blip2QFormerConfig,
    Blip2VisionModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

logger = logging.getLogger("groundvlm")

STAGES = ("converter", "qformer_pretrain", "stage1", "stage2", "tfs", "inherit", "eval")
MODEL_DIR = "model"
CONVERTER_NAME = "converter.safetensors"
CURVE_NAME = "eval_curve"


@dataclass
class VPGTransArguments:
    """What to transfer, from where, on which data; the optimiser/epochs come from `TrainingArguments`."""

    stage: str | None = field(default=None, metadata={"help": f"One of {STAGES}."})
    # Models (folders; "toy:<artefact>" names a toy base model of the preset, e.g. toy:lm-opt-base).
    source_model: str | None = field(default=None, metadata={"help": "Source VL-LLM folder (converter, inherit)."})
    language_model: str | None = field(default=None, metadata={"help": "Target LLM folder (converter, inherit, tfs)."})
    vision_model: str | None = field(default=None, metadata={"help": "ViT folder (Blip2VisionModel + image processor) for tfs / qformer_pretrain."})
    init_model: str | None = field(default=None, metadata={"help": "VL-LLM folder to start from (stage1, stage2, eval)."})
    qformer_init: str | None = field(default=None, metadata={"help": f"{QFORMER_WEIGHTS_NAME} (qformer_pretrain output) for tfs."})
    # A new VPG (tfs / qformer_pretrain).
    num_query_tokens: int = 32
    qformer_hidden_size: int = 128
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_cross_attention_frequency: int = 1
    # Text handling.
    max_txt_len: int = 32
    # Learning-rate schedule (LAVIS linear_warmup_cosine_lr per inner epoch; learning_rate = init_lr).
    min_lr: float = 1e-5
    warmup_lr: float | None = field(default=None, metadata={"help": "LR at step 0 of the warm-up (default: no warm-up)."})
    stage1_lr_multiplier: float = field(default=5.0, metadata={"help": "Stage 1 runs at this x learning_rate, constant."})
    iters_per_inner_epoch: int | None = field(default=None, metadata={"help": "Optimizer steps per inner epoch (default: one pass over the data)."})
    # Toy-captioner options (keep the defaults for VPGTrans experiments: the frozen-LM premise).
    unfreeze_lm: bool = False
    text_replay_weight: float = 0.0
    text_replay_batch_size: int = 32
    # Converter.
    converter_epochs: int | None = None
    converter_lr: float = 5.0
    converter_captions_per_batch: int = 4096
    converter_captions: int = 20000
    # Data.
    dataset: Literal["toy", "coco"] = "toy"
    toy_train_size: int = 2000
    toy_eval_size: int = 64
    toy_references: int = 5
    train_file: str | None = None
    image_root: str | None = None
    eval_caption_file: str | None = None
    eval_vqa_questions: str | None = None
    eval_vqa_annotations: str | None = None
    eval_gqa_file: str | None = None
    eval_vqa_image_root: str | None = None
    eval_max_examples: int | None = None
    # Evaluation decoding (spec A7 defaults).
    eval_each_epoch: bool = True
    caption_num_beams: int = 5
    caption_min_length: int = 8
    caption_max_length: int = 30
    vqa_num_beams: int = 5
    vqa_max_length: int = 10
    vqa_length_penalty: float = -1.0
    eval_batch_size: int = 16


# ----------------------------------------------------------------------------------------------------- models


def resolve_path(path: str | None, preset: str, what: str) -> str:
    """A folder path; `toy:<artefact>` builds/finds a toy base model of `preset`."""
    if path is None:
        raise ValueError(f"--{what} is required for this stage.")
    if path.startswith("toy:"):
        from groundvlm.recipes.toyworld import toy_asset

        return str(toy_asset(path[4:], "test" if preset == "test" else preset))
    if not Path(path).exists():
        raise FileNotFoundError(f"--{what} {path} does not exist.")
    return path


def load_language_model(path: str):
    """(LLM, tokenizer) from a folder; encoder-decoder configs load as Seq2Seq LMs."""
    config = AutoConfig.from_pretrained(path)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def make_processor(image_processor, tokenizer, model: VPGTransModel, max_txt_len: int) -> VPGTransProcessor:
    return VPGTransProcessor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=model.config.num_query_tokens,
        max_txt_len=max_txt_len, is_encoder_decoder=not model.config.use_decoder_only_language_model,
    )  # fmt: skip


def load_vl_llm(path: str, max_txt_len: int) -> tuple[VPGTransModel, VPGTransProcessor]:
    model = VPGTransModel.from_pretrained(path)
    processor = VPGTransProcessor.from_pretrained(path)
    processor.max_txt_len = max_txt_len
    return model, processor


def qformer_config(args: VPGTransArguments, vision_hidden: int, text_input: bool = False, vocab_size: int = 2) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        hidden_size=args.qformer_hidden_size, num_hidden_layers=args.qformer_layers,
        num_attention_heads=args.qformer_heads, intermediate_size=4 * args.qformer_hidden_size,
        cross_attention_frequency=args.qformer_cross_attention_frequency, encoder_hidden_size=vision_hidden,
        use_qformer_text_input=text_input, vocab_size=vocab_size, pad_token_id=0, initializer_range=0.02,
        max_position_embeddings=max(64, args.max_txt_len + 8),
    )  # fmt: skip


def build_from_scratch(args: VPGTransArguments, vision_path: str, lm_path: str):
    """The `tfs` VL-LLM: pretrained ViT + pretrained LLM, a new (or BLIP-like pretrained) Q-Former and projector.

    The Q-Former gets a real initialisation (std 0.02, queries N(0, 0.02)); BLIP-2's vision config default of
    1e-10 is for loading weights only (a feasibility probe run before this project; its notes live outside this repo)."""
    vision = Blip2VisionModel.from_pretrained(vision_path)
    lm, tokenizer = load_language_model(lm_path)
    processor = VPGTransProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision_path), tokenizer=tokenizer,
        num_query_tokens=args.num_query_tokens, max_txt_len=args.max_txt_len,
        is_encoder_decoder=lm.config.is_encoder_decoder,
    )  # fmt: skip
    if processor.image_token_id >= lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))
    config = VPGTransConfig(
        vision_config=vision.config.to_dict(),
        qformer_config=qformer_config(args, vision.config.hidden_size).to_dict(),
        text_config=lm.config.to_dict(), num_query_tokens=args.num_query_tokens,
        image_token_index=processor.image_token_id, use_decoder_only_language_model=not lm.config.is_encoder_decoder,
    )  # fmt: skip
    model = VPGTransModel(config)
    model.vision_model.load_state_dict(vision.state_dict())
    model.language_model.load_state_dict(lm.state_dict())
    model.generation_config = lm.generation_config
    if processor.newline_token_id is not None:
        model.generation_config.eos_token_id = processor.newline_token_id
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    if args.qformer_init:
        load_pretrained_qformer(model, args.qformer_init)
    return model, processor


def build_inherit(args: VPGTransArguments, source_path: str, lm_path: str, converter=None):
    """Target VL-LLM from the source VL-LLM: VPG inherited, projector merged (converter) or random (None)."""
    source = VPGTransModel.from_pretrained(source_path)
    source_processor = VPGTransProcessor.from_pretrained(source_path)
    lm, tokenizer = load_language_model(lm_path)
    if source.language_projection.out_features != source.config.text_config.hidden_size:
        raise ValueError("The source checkpoint's projector does not match its LLM hidden size.")
    model = build_target_model(source, lm, tokenizer, converter)
    return model, make_processor(source_processor.image_processor, tokenizer, model, args.max_txt_len)


# ----------------------------------------------------------------------------------------------- freezing


def trainable_prefixes(stage: str, unfreeze_lm: bool = False) -> tuple[str, ...]:
    """Parameter-name prefixes that train in `stage` (spec A3). Everything else is frozen."""
    if stage == "stage1":
        prefixes = ("language_projection.",)
    elif stage in ("stage2", "tfs", "inherit"):
        prefixes = ("qformer.", "query_tokens", "vision_model.post_layernorm.", "language_projection.")
    else:
        raise ValueError(f"Stage {stage!r} does not train the VL-LLM; expected stage1, stage2, tfs or inherit.")
    return prefixes + (("language_model.",) if unfreeze_lm else ())


def _disabled_train(self, mode: bool = True):
    # LAVIS `disabled_train`: the frozen ViT stays in eval mode whatever the Trainer asks.
    return self


def freeze_for_stage(model: VPGTransModel, stage: str, unfreeze_lm: bool = False) -> list[str]:
    """Set requires_grad per `trainable_prefixes`; returns the names of the trainable parameters."""
    prefixes = trainable_prefixes(stage, unfreeze_lm)
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
        if param.requires_grad:
            names.append(name)
    model.vision_model.eval()
    model.vision_model.train = types.MethodType(_disabled_train, model.vision_model)
    if not names:
        raise ValueError(f"No parameter of the model matches the trainable prefixes {prefixes} of stage {stage}.")
    return names


# ------------------------------------------------------------------------------------ optimiser and schedule


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


def inner_epoch_cosine_lr(step: int, steps_per_epoch: int, num_epochs: int, init_lr: float, min_lr: float,
                          warmup_steps: int = 0, warmup_lr: float | None = None) -> float:  # fmt: skip
    """LAVIS `LinearWarmupCosineLRScheduler` at optimizer step `step` (spec A4).

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

    def __init__(self, *args, vpg_args: VPGTransArguments, replay=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.vpg_args = vpg_args
        self.replay = replay
        self.steps_per_epoch = None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            groups = lavis_param_groups(model or self.model, self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(
                groups, lr=self.base_lr(), betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon
            )
        return self.optimizer

    def base_lr(self) -> float:
        if self.vpg_args.stage == "stage1":
            return self.args.learning_rate * self.vpg_args.stage1_lr_multiplier
        return self.args.learning_rate

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            a = self.vpg_args
            self.steps_per_epoch = a.iters_per_inner_epoch or max(1, math.ceil(num_training_steps / self.args.num_train_epochs))
            num_epochs = max(1, math.ceil(num_training_steps / self.steps_per_epoch))
            init = self.base_lr()
            if a.stage == "stage1":
                # Spec A4: init_lr = min_lr = 5x base, no warm-up -> constant.
                lr_at = lambda step: init
            else:
                lr_at = lambda step: inner_epoch_cosine_lr(
                    step, self.steps_per_epoch, num_epochs, init, a.min_lr, self.args.warmup_steps, a.warmup_lr
                )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step) / init)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self.replay is None or self.vpg_args.text_replay_weight <= 0:
            return out
        loss, outputs = out if return_outputs else (out, None)
        lm = model.module.language_model if hasattr(model, "module") else model.language_model
        batch = {k: v.to(loss.device) for k, v in self.replay.next_batch().items()}
        loss = loss + self.vpg_args.text_replay_weight * lm(**batch).loss
        return (loss, outputs) if return_outputs else loss


class TextReplay:
    """Batches of the LLM's own pretraining text (toy corpus), drawn with replacement from a seeded generator."""

    def __init__(self, family: str, tokenizer, corpus: list[str], batch_size: int, seed: int = 0):
        from groundvlm.recipes.toyworld.lms import collate, encode_examples

        if not corpus:
            raise ValueError("Text replay needs a non-empty corpus.")
        self.examples = encode_examples(family, tokenizer, corpus, seed=seed)
        self._collate = lambda ex: collate(family, tokenizer, ex)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self.examples), (self.batch_size,), generator=self.generator).tolist()
        return self._collate([self.examples[i] for i in idx])


# ------------------------------------------------------------------------------------------ data and eval


def train_data(args: VPGTransArguments, seed: int):
    if args.dataset == "toy":
        return ToyCaptions(args.toy_train_size, split="all", seed=seed)
    if not (args.train_file and args.image_root):
        raise ValueError("--dataset coco needs --train_file and --image_root.")
    return load_coco_karpathy(args.train_file, args.image_root, split="train", train=True)


def _subset(data, n):
    if data is None or n is None or n >= len(data):
        return data
    return torch.utils.data.Subset(data, range(n))


def eval_data(args: VPGTransArguments, seed: int):
    """(caption eval data, VQA eval data); toy eval scenes use another seed than training."""
    if args.dataset == "toy":
        n = args.toy_eval_size
        return (ToyCaptions(n, split="all", seed=seed + 1000, references=args.toy_references),
                ToyVQA(n, split="all", seed=seed + 2000))  # fmt: skip
    captions = load_coco_karpathy(args.eval_caption_file, args.image_root, split="val", train=False) if args.eval_caption_file else None
    vqa = None
    if args.eval_vqa_questions:
        vqa = load_vqa(args.eval_vqa_questions, args.eval_vqa_annotations, args.eval_vqa_image_root)
    elif args.eval_gqa_file:
        vqa = load_gqa(args.eval_gqa_file, args.eval_vqa_image_root)
    return _subset(captions, args.eval_max_examples), _subset(vqa, args.eval_max_examples)


def generation_settings(args: VPGTransArguments) -> GenerationSettings:
    return GenerationSettings(
        caption_num_beams=args.caption_num_beams, caption_min_length=args.caption_min_length,
        caption_max_length=args.caption_max_length, vqa_num_beams=args.vqa_num_beams,
        vqa_max_length=args.vqa_max_length, vqa_length_penalty=args.vqa_length_penalty,
        batch_size=args.eval_batch_size,
    )  # fmt: skip


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
        for key, value in [("epoch", epoch), ("step", step)] + [(k, v) for k, v in metrics.items() if isinstance(v, float)]:
            curve.setdefault(key, []).append(value)
        write_metrics(self.run_dir, CURVE_NAME, curve)
        logger.info("epoch %d (step %d): %s", epoch, step, metrics)
        return metrics


# --------------------------------------------------------------------------------------------------- stages


def run_converter(args: VPGTransArguments, training_args: TrainingArguments, run_dir: Path, preset: str) -> Path:
    """Train the word converter on caption text; save it and the target VL-LLM with the merged projector."""
    source_path = resolve_path(args.source_model, preset, "source_model")
    lm_path = resolve_path(args.language_model, preset, "language_model")
    source = VPGTransModel.from_pretrained(source_path)
    source_tokenizer = AutoTokenizer.from_pretrained(source_path)
    target_lm, target_tokenizer = load_language_model(lm_path)
    data = train_data(args, training_args.seed)
    n = min(args.converter_captions, len(data))
    captions = [data[i]["text"] for i in range(n)]
    pairs = pair_caption_tokens(captions, source_tokenizer, target_tokenizer)
    losses = []
    converter = train_word_converter(
        input_word_embeddings(source.language_model), input_word_embeddings(target_lm), pairs,
        epochs=args.converter_epochs, lr=args.converter_lr, captions_per_batch=args.converter_captions_per_batch,
        seed=training_args.seed, on_step=lambda e, s, loss: losses.append(loss),
    )  # fmt: skip
    save_safetensors_atomic(
        {"weight": converter.weight.detach(), "bias": converter.bias.detach()}, run_dir / CONVERTER_NAME
    )
    target = build_target_model(source, target_lm, target_tokenizer, converter)
    source_processor = VPGTransProcessor.from_pretrained(source_path)
    processor = make_processor(source_processor.image_processor, target_tokenizer, target, args.max_txt_len)
    target.save_pretrained(run_dir / MODEL_DIR)
    processor.save_pretrained(run_dir / MODEL_DIR)
    write_metrics(run_dir, "converter", {
        "captions": pairs.num_captions, "paired_captions": len(pairs.pairs), "paired_tokens": pairs.num_tokens,
        "same_tokenizer": pairs.same_tokenizer, "first_loss": losses[0], "final_loss": losses[-1],
    })  # fmt: skip
    return run_dir / MODEL_DIR


class _PretrainCollator:
    def __init__(self, image_processor, tokenizer, max_len: int):
        self.image_processor, self.tokenizer, self.max_len = image_processor, tokenizer, max_len

    def __call__(self, examples):
        text = self.tokenizer([e["text"] for e in examples], padding="longest", truncation=True,
                              max_length=self.max_len, return_tensors="pt")  # fmt: skip
        pixels = self.image_processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}


def run_qformer_pretrain(args, training_args, run_args, run_dir: Path) -> Path:
    """BLIP-2 stage 1 (ITC + ITM + ITG) on captions; saves `qformer_pretrained.safetensors`."""
    vision_path = resolve_path(args.vision_model, run_args.preset, "vision_model")
    lm_path = resolve_path(args.language_model, run_args.preset, "language_model")
    tokenizer = AutoTokenizer.from_pretrained(lm_path)  # the Q-Former reads text with the LLM's tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vision = Blip2VisionModel.from_pretrained(vision_path)
    config = qformer_config(args, vision.config.hidden_size, text_input=True, vocab_size=len(tokenizer))
    model = QFormerPretrainer(vision, config, args.num_query_tokens)
    trainer = VPGTransTrainer(
        model=model, args=training_args, train_dataset=train_data(args, training_args.seed),
        data_collator=_PretrainCollator(AutoImageProcessor.from_pretrained(vision_path), tokenizer, args.max_txt_len),
        vpg_args=args,
    )  # fmt: skip
    result = train_resuming(trainer, resume=run_args.resume)
    path = save_safetensors_atomic(model.vpgtrans_state_dict(), run_dir / QFORMER_WEIGHTS_NAME)
    write_metrics(run_dir, "train", result.metrics)
    return path


def build_stage_model(args, run_args):
    """The VL-LLM a training stage starts from, and its processor."""
    preset = run_args.preset
    if args.stage in ("stage1", "stage2", "eval"):
        return load_vl_llm(resolve_path(args.init_model, preset, "init_model"), args.max_txt_len)
    if args.stage == "inherit":
        return build_inherit(
            args, resolve_path(args.source_model, preset, "source_model"),
            resolve_path(args.language_model, preset, "language_model"),
        )  # fmt: skip
    return build_from_scratch(
        args, resolve_path(args.vision_model, preset, "vision_model"),
        resolve_path(args.language_model, preset, "language_model"),
    )  # fmt: skip


def run_training(args, training_args, run_args, run_dir: Path):
    model, processor = build_stage_model(args, run_args)
    caption_eval, vqa_eval = eval_data(args, training_args.seed)
    settings = generation_settings(args)
    if args.stage == "eval":
        metrics = evaluate_vl_llm(model, processor, caption_eval, vqa_eval, settings, args.dataset == "toy")
        write_metrics(run_dir, "eval", metrics)
        return model, processor, metrics
    if args.stage == "stage1" and training_args.num_train_epochs != 1:
        logger.warning("Stage 1 is 1 epoch in the reference; running %s epochs as asked.", training_args.num_train_epochs)
    names = freeze_for_stage(model, args.stage, args.unfreeze_lm)
    logger.info("stage %s: %d trainable tensors (%d parameters)", args.stage, len(names),
                sum(p.numel() for p in model.parameters() if p.requires_grad))  # fmt: skip
    replay = None
    if args.text_replay_weight > 0:
        if not args.unfreeze_lm:
            raise ValueError("--text_replay_weight keeps an unfrozen LLM's language; it needs --unfreeze_lm.")
        replay = _toy_replay(args, processor, run_args.preset, training_args.seed)
    trainer = VPGTransTrainer(
        model=model, args=training_args, train_dataset=train_data(args, training_args.seed),
        data_collator=CaptionCollator(processor), vpg_args=args, replay=replay,
    )  # fmt: skip
    if args.eval_each_epoch:
        trainer.add_callback(EpochEvalCallback(trainer, processor, caption_eval, vqa_eval, settings, run_dir, args.dataset))
    result = train_resuming(trainer, resume=run_args.resume)
    model.save_pretrained(run_dir / MODEL_DIR)
    processor.save_pretrained(run_dir / MODEL_DIR)
    write_metrics(run_dir, "train", result.metrics)
    return model, processor, result.metrics


def _toy_replay(args, processor, preset: str, seed: int) -> TextReplay:
    from groundvlm.modeling.vpgtrans_transfer import guess_tokenizer_family
    from groundvlm.recipes.toyworld import PRESETS, SEED, _corpus

    corpus = _corpus(PRESETS[preset].corpus_scenes, SEED)
    return TextReplay(guess_tokenizer_family(processor.tokenizer), processor.tokenizer, corpus, args.text_replay_batch_size, seed)


def main(argv=None):
    run_args, args, training_args = parse_recipe_args((RunArguments, VPGTransArguments, TrainingArguments), argv, recipe="vpgtrans")
    if args.stage not in STAGES:
        raise ValueError(f"Unknown or missing --stage {args.stage!r}; expected one of {STAGES}.")
    training_args.remove_unused_columns = False  # examples are dicts with PIL images; the collator reads them
    run_dir = prepare_run_dir(training_args.output_dir, run_args, args, training_args)
    # Every stage's new parameters (converter, random projector of `inherit`, Q-Former heads) come from the seed:
    # torch's default generator starts from a random seed per process, and the Trainer seeds only after the model
    # exists.
    set_seed(training_args.seed)
    if args.stage == "converter":
        return run_converter(args, training_args, run_dir, run_args.preset)
    if args.stage == "qformer_pretrain":
        return run_qformer_pretrain(args, training_args, run_args, run_dir)
    return run_training(args, training_args, run_args, run_dir)


if __name__ == "__main__":
    main()
