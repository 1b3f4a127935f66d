"""VPGTrans's arguments, split by concern as trl splits `ScriptArguments` / `ModelConfig` / `SFTConfig`.

- `VPGTransScriptArguments`: which stage runs, on which data;
- `VPGTransModelArguments`: the models it starts from and the shape of a new VPG;
- `VPGTransEvalArguments`: zero-shot evaluation and its decoding;
- `VPGTransTrainingArguments`: `TrainingArguments` plus the LAVIS schedule, the word converter and the toy
  captioner's LLM options.

    run_args, script_args, model_args, eval_args, training_args = parse_recipe_args(VPGTRANS_ARGUMENTS, argv)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from groundvlm.recipes.common.arguments import RecipeError, RunArguments, check_arg, check_positive
from groundvlm.recipes.systems.vpgtrans.qformer import QFORMER_WEIGHTS_NAME

STAGES = ("converter", "qformer_pretrain", "stage1", "stage2", "tfs", "inherit", "eval")


@dataclass
class VPGTransScriptArguments:
    """Which stage runs, and the data it trains and evaluates on."""

    stage: str | None = field(default=None, metadata={"help": f"One of {STAGES}."})
    dataset: Literal["toy", "coco"] = "toy"
    toy_train_size: int = 2000
    toy_vqa_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of toy training examples that are a colour/shape question about one object of the scene "
            "('Question: What colour is the star? Answer: red') instead of a caption: teaches the VL-LLM to bind an "
            "attribute to the object a text names. 0: captions only."
        },
    )
    toy_located_caption_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of toy training captions that name each object's coarse location in words ('a red star "
            "at the top left'; never coordinates), as some real captions do. 0: position-free captions only."
        },
    )
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

    def __post_init__(self):
        check_arg(self.stage is None or self.stage in STAGES, "stage", self.stage, f"one of {', '.join(STAGES)}")
        check_positive(self, "toy_train_size", "toy_eval_size", "toy_references")
        check_arg(
            0.0 <= self.toy_located_caption_fraction <= 1.0,
            "toy_located_caption_fraction",
            self.toy_located_caption_fraction,
            "a share in [0, 1]",
        )
        check_arg(0.0 <= self.toy_vqa_fraction <= 1.0, "toy_vqa_fraction", self.toy_vqa_fraction, "a share in [0, 1]")
        check_positive(self, "eval_max_examples", allow_none=True)


@dataclass
class VPGTransModelArguments:
    """The models a stage starts from (folders; "toy:<artefact>" names a toy base model of the preset, e.g.
    toy:lm-opt-base) and the shape of a new VPG (tfs / qformer_pretrain)."""

    source_model: str | None = field(default=None, metadata={"help": "Source VL-LLM folder (converter, inherit)."})
    language_model: str | None = field(default=None, metadata={"help": "Target LLM folder (converter, inherit, tfs)."})
    vision_model: str | None = field(
        default=None, metadata={"help": "ViT folder (Blip2VisionModel + image processor) for tfs / qformer_pretrain."}
    )
    init_model: str | None = field(
        default=None, metadata={"help": "VL-LLM folder to start from (stage1, stage2, eval)."}
    )
    qformer_init: str | None = field(
        default=None, metadata={"help": f"{QFORMER_WEIGHTS_NAME} (qformer_pretrain output) for tfs."}
    )
    num_query_tokens: int = 32
    qformer_hidden_size: int = 128
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_cross_attention_frequency: int = 1
    max_txt_len: int = 32

    def __post_init__(self):
        check_positive(self, "num_query_tokens", "qformer_hidden_size", "qformer_layers", "qformer_heads")
        check_positive(self, "qformer_cross_attention_frequency", "max_txt_len")
        check_arg(
            self.qformer_hidden_size % self.qformer_heads == 0,
            "qformer_hidden_size",
            self.qformer_hidden_size,
            f"a multiple of --qformer_heads ({self.qformer_heads})",
        )


@dataclass
class VPGTransEvalArguments:
    """Zero-shot evaluation after every (inner) epoch; decoding defaults of the LAVIS caption / VQA configs."""

    eval_each_epoch: bool = True
    caption_num_beams: int = 5
    caption_min_length: int = 8
    caption_max_length: int = 30
    vqa_num_beams: int = 5
    vqa_max_length: int = 10
    vqa_length_penalty: float = -1.0
    eval_batch_size: int = 16

    def __post_init__(self):
        check_positive(self, "caption_num_beams", "caption_max_length", "vqa_num_beams", "vqa_max_length")
        check_positive(self, "eval_batch_size")
        check_positive(self, "caption_min_length", allow_zero=True)
        check_arg(
            self.caption_min_length <= self.caption_max_length,
            "caption_min_length",
            self.caption_min_length,
            f"<= --caption_max_length ({self.caption_max_length})",
        )


@dataclass
class VPGTransTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the LAVIS `linear_warmup_cosine_lr` schedule per inner epoch (`learning_rate` is its
    init_lr), the word converter's optimisation, and the toy captioner's LLM options (keep their defaults for
    VPGTrans experiments: the frozen-LLM premise)."""

    min_lr: float = 1e-5
    warmup_lr: float | None = field(
        default=None, metadata={"help": "LR at step 0 of the warm-up (default: no warm-up)."}
    )
    stage1_lr_multiplier: float = field(
        default=5.0, metadata={"help": "Stage 1 runs at this x learning_rate, constant."}
    )
    iters_per_inner_epoch: int | None = field(
        default=None, metadata={"help": "Optimizer steps per inner epoch (default: one pass over the data)."}
    )
    unfreeze_lm: bool = False
    text_replay_weight: float = 0.0
    text_replay_batch_size: int = 32
    text_replay_behind_image: bool = field(
        default=False,
        metadata={
            "help": "Replay the LM's text behind the visual prompts of unrelated batch images (through the whole "
            "VL-LLM), so the LM keeps writing boxes/numbers when an image prefix is present."
        },
    )
    text_replay_lookup_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Share of each replay batch that is an in-context lookup (a question about a caption, or PIN's "
            "prompt about objects listed with their boxes), answer-only; needs text_replay_behind_image."
        },
    )
    text_replay_lookup_listed: int | None = field(
        default=None,
        metadata={
            "help": "In PIN's lookups of the replay, list up to this many objects: the scene's own plus distractor "
            "categories with random boxes (default: the scene's objects only)."
        },
    )
    converter_epochs: int | None = None
    converter_lr: float = 5.0
    converter_captions_per_batch: int = 4096
    converter_captions: int = 20000

    def __post_init__(self):
        check_positive(self, "min_lr", "stage1_lr_multiplier", "converter_lr", allow_zero=True)
        check_positive(self, "text_replay_weight", allow_zero=True)
        check_positive(self, "text_replay_batch_size", "converter_captions_per_batch", "converter_captions")
        check_positive(self, "iters_per_inner_epoch", "converter_epochs", "warmup_lr", allow_none=True)
        fraction = self.text_replay_lookup_fraction
        check_arg(0.0 <= fraction <= 1.0, "text_replay_lookup_fraction", fraction, "a share in [0, 1]")
        check_arg(
            not fraction or (self.text_replay_behind_image and self.text_replay_weight > 0),
            "text_replay_lookup_fraction",
            fraction,
            "0 unless the replay runs behind the image (--text_replay_behind_image true, --text_replay_weight > 0)",
        )
        listed = self.text_replay_lookup_listed
        check_arg(
            listed is None or (listed >= 2 and fraction > 0),
            "text_replay_lookup_listed",
            listed,
            "at least 2, and only with text_replay_lookup_fraction > 0",
        )
        if self.max_steps is None or self.max_steps <= 0:  # epochs decide the length of training
            check_positive(self, "num_train_epochs")
        super().__post_init__()


VPGTRANS_ARGUMENTS = (
    RunArguments,
    VPGTransScriptArguments,
    VPGTransModelArguments,
    VPGTransEvalArguments,
    VPGTransTrainingArguments,
)
"""The dataclasses `parse_recipe_args` fills for the VPGTrans recipe, in the order it returns them."""


def check_stage(script_args: VPGTransScriptArguments, training_args: VPGTransTrainingArguments) -> None:
    """Fail on an unknown stage before anything is written; keep the examples' columns (dicts with PIL images,
    which the collators read)."""
    if script_args.stage not in STAGES:
        raise RecipeError(f"Unknown or missing --stage {script_args.stage!r}; expected one of {STAGES}.")
    training_args.remove_unused_columns = False
