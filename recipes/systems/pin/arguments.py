"""PIN's arguments: what it trains on, which methods run and how they are evaluated, and its optimisation defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from groundvlm.recipes.common.arguments import RecipeError, check_arg, check_fraction, check_positive
from groundvlm.recipes.systems.pin.baselines import METHODS, check_method


@dataclass
class PinArguments:
    """What PIN trains on, which methods run, and how they are evaluated."""

    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Folder (or Hub id) of the frozen base VLM + its processor (BLIP-2 / VPGTrans). Default: "
            "the toy caption VL-LLM, toy asset 'vlm-caption'."
        },
    )
    methods: list[str] = field(
        default_factory=lambda: ["raw", "random", "full_image", "pin"],
        metadata={"help": f"Methods to run and compare, of {', '.join(METHODS)}."},
    )
    method: str | None = field(default=None, metadata={"help": "Run this one method only (overrides methods)."})
    objects_dir: str | None = field(
        default=None,
        metadata={
            "help": "X-Paste-style object pool (category folders of RGBA cut-outs, or a json "
            "index) instead of the toy world's procedural objects."
        },
    )
    backgrounds_dir: str | None = field(default=None, metadata={"help": "Folder of background images (BG-20k)."})
    held_out_categories: list[str] | None = field(
        default=None, metadata={"help": "With objects_dir: categories kept out of training (evaluated zero-shot)."}
    )
    grid_size: int = field(
        default=16,
        metadata={
            "help": "Cells per side of PIN's box grid (the reference: 16): scenes are composed on it, the processor "
            "writes and reads boxes on it, and the trained PIN's config records it."
        },
    )
    scene_seed: int = field(default=0, metadata={"help": "Seed of the scene composition."})
    train_images: int = field(default=2000, metadata={"help": "Images per training pool (curriculum and main)."})
    val_images: int = field(default=60, metadata={"help": "Validation images (training categories, new images)."})
    test_images: int = field(default=100, metadata={"help": "Test images of the held-out categories."})
    epochs: int = field(default=30, metadata={"help": "Passes over the training pool (the reference: 160 x 60k)."})
    name_reconstruction_fraction: float = field(
        default=0.25,
        metadata={
            "help": "Fraction of the passes with exactly curriculum_num_objects objects and "
            "the loss also on the name (the reference: the first quarter)."
        },
    )
    curriculum_num_objects: int = field(default=3, metadata={"help": "Objects per image in the curriculum pool."})
    max_objects: int = field(
        default=3,
        metadata={
            "help": "Toy scenes hold 1 to max_objects objects (PIN §4: a_max = 3). 1 removes "
            "the name-to-object binding from the task: the LLM reads one object's position from its prefix."
        },
    )
    referral_probability: float = field(
        default=0.0, metadata={"help": "Share of box-only samples named positionally ('red star on the left')."}
    )
    fresh_scenes: bool = field(
        default=False,
        metadata={
            "help": "Compose a new scene for every training sample (the reference): train_images x epochs samples "
            "in all, the first name_reconstruction_fraction of them the curriculum; no pool, no feature cache."
        },
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
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Evaluation's new tokens. Default: the reference's 12, or what the longest box takes with the "
            "base's tokenizer where that is more (a tokenizer that splits digits, as LLaMA's)."
        },
    )
    eval_batch_size: int = field(default=64)
    grid_columns: int = field(default=8, metadata={"help": "Samples per row of predictions.png."})
    eval_format: Literal["none", "toy", "voc", "coco", "lvis", "refcoco"] = field(
        default="toy",
        metadata={
            "help": "Held-out evaluation set: 'toy' (test_images of the held-out categories), "
            "a real set 'voc' | 'coco' | 'lvis' | 'refcoco' (images with <= 3 objects; RefCOCO "
            "adds P@0.3), or 'none' (validation only)."
        },
    )
    eval_annotations: str | None = field(
        default=None,
        metadata={
            "help": "voc: the VOC2007 folder (Annotations/, ImageSets/Main/, JPEGImages/); coco: "
            "instances_val2017.json; lvis: lvis_v1_val.json; refcoco: refs(unc).p / a json "
            "refs list / their folder, with instances.json beside it."
        },
    )
    eval_images: str | None = field(
        default=None,
        metadata={
            "help": "Image folder of the real set (voc: default <eval_annotations>/JPEGImages; "
            "lvis: the COCO root with train2017/ and val2017/; refcoco: COCO train2014)."
        },
    )
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "voc: ImageSets/Main/<split>.txt (default test); refcoco: val | testA | "
            "testB (default testA, as the paper)."
        },
    )
    eval_max_images: int | None = field(default=None, metadata={"help": "Evaluate the first N kept images only."})
    eval_allow_pickle: bool = field(
        default=False, metadata={"help": "Allow reading the pickled refs(unc).p of RefCOCO (plain data only)."}
    )

    def __post_init__(self):
        """Check ranges when the arguments are parsed, before any model or data is loaded."""
        check_positive(
            self,
            "grid_size",
            "train_images",
            "epochs",
            "curriculum_num_objects",
            "coop_tokens",
            "vpt_tokens",
            "max_objects",
        )
        check_arg(
            self.curriculum_num_objects <= self.max_objects,
            "curriculum_num_objects",
            self.curriculum_num_objects,
            f"at most max_objects={self.max_objects}",
        )
        check_positive(self, "lora_r", "lora_alpha", "num_beams", "eval_batch_size", "grid_columns")
        check_positive(self, "max_new_tokens", allow_none=True)
        check_positive(self, "val_images", "test_images", allow_zero=True)
        check_positive(self, "eval_max_images", allow_none=True)
        check_fraction(self, "name_reconstruction_fraction", "referral_probability")
        dtypes = ("float32", "float16", "bfloat16")
        check_arg(
            self.feature_cache_dtype in dtypes, "feature_cache_dtype", self.feature_cache_dtype, " | ".join(dtypes)
        )
        for method in [self.method] if self.method else self.methods:
            try:
                check_method(method)
            except ValueError as error:
                raise RecipeError(str(error)) from None
        if not self.method and not self.methods:
            raise RecipeError("no method to run: give --method or --methods")


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


def with_preset_config(argv: list[str]) -> list[str]:
    """`--preset gpu` without `--config` means the shipped GPU config (recipes/pin/toy_gpu.yaml)."""
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    gpu = any(a == "--preset=gpu" for a in argv) or any(
        a == "--preset" and i + 1 < len(argv) and argv[i + 1] == "gpu" for i, a in enumerate(argv)
    )
    return ["--config", "toy_gpu", *argv] if gpu and not has_config else argv


def selected_methods(pin_args: PinArguments) -> list[str]:
    """The methods to run (`--method` overrides `--methods`), each checked; also checks the cache dtype."""
    methods = [pin_args.method] if pin_args.method else list(pin_args.methods)
    if not methods:
        raise ValueError("no method to run: give --method or --methods")
    for m in methods:
        check_method(m)
    if pin_args.feature_cache_dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(
            f"feature_cache_dtype must be float32, float16 or bfloat16, got {pin_args.feature_cache_dtype!r}"
        )
    return methods
