"""Arguments of the Groma recipe: `GromaArguments` (what to build, train and evaluate) and `GromaTrainingArguments`
(trl's `SFTConfig` with the recipe's defaults; used by every stage, the det stage through a plain `Trainer`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl import SFTConfig

from groundvlm.recipes.common.arguments import RecipeError, check_arg, check_positive

EVAL_TASKS = ("proposer", "rec", "grounded_caption", "region_caption", "lvis")


@dataclass
class GromaArguments:
    """Stage, models, data and evaluation of a Groma run."""

    stage: Literal["all", "det", "align", "instruct", "eval"] = field(
        default="all", metadata={"help": "det | align | instruct | eval, or all (the toy default: the three stages "
                                 "with their preset configs, then eval)."},
    )  # fmt: skip
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Groma folder this stage starts from. Default: the previous stage's "
                                "<output_dir>/<stage>/final (det: a new Groma from vision_model + llm)."},
    )  # fmt: skip
    vision_model: str | None = field(default=None, metadata={"help": "DINOv2 folder (default: toy 'vision-dinov2')."})
    llm: str | None = field(default=None, metadata={"help": "Llama folder + tokenizer (default: toy 'lm-llama')."})
    image_size: int | None = field(default=None, metadata={"help": "Input side (paper: 448); default: DINOv2's."})
    proposer_sizes: dict | None = field(
        default=None, metadata={"help": "GromaConfig overrides for a new model (proposer_*/region_*/max_region_num); "
                                "default: the toy preset's sizes; the paper uses GromaConfig's defaults ({})."},
    )  # fmt: skip
    region_box_quirk: bool = field(default=False, metadata={"help": "Train with the reference's cxcywh-as-corners "
                                                            "RoI boxes (upstream #11, #21)."})  # fmt: skip
    shuffle_regions: bool = field(default=False, metadata={"help": "align/instruct: regions in a random order every "
                                  "forward (the reference's torch.randperm), so the LLM cannot answer by score rank; "
                                  "eval keeps the score order. Off by default: toy CPU REC 0.074 with it."})  # fmt: skip
    scene_seed: int = field(default=0, metadata={"help": "Toy world seed (eval scenes use scene_seed + 1)."})
    toy_train_scenes: int = field(default=1000, metadata={"help": "Toy scenes per training stage (0: no toy data)."})
    toy_eval_scenes: int = field(default=100, metadata={"help": "Toy validation scenes for eval (0: none)."})
    toy_num_objects: list[int] = field(default_factory=lambda: [1, 3], metadata={"help": "min max objects/scene"})
    # real data (loaders in recipes/systems/groma/data.py); each is added to the stage that uses it
    det_annotations: list[str] = field(default_factory=list, metadata={"help": "det: COCO-format jsons."})
    det_images: list[str] = field(default_factory=list, metadata={"help": "det: image folder per json."})
    det_sources: list[str] = field(default_factory=list, metadata={"help": "det: coco | sa1b per json."})
    refcoco_refs: str | None = field(default=None, metadata={"help": "refs(unc).p / refs json (or their folder)."})
    refcoco_instances: str | None = field(default=None, metadata={"help": "RefCOCO instances.json"})
    refcoco_images: str | None = field(default=None, metadata={"help": "COCO train2014 folder"})
    refcoco_split: str = field(default="val", metadata={"help": "eval split (train uses 'train')"})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow reading refs(unc).p (plain data only)."})
    flickr_root: str | None = field(default=None, metadata={"help": "Flickr30k Entities (Annotations/, Sentences/)"})
    flickr_images: str | None = field(default=None, metadata={"help": "flickr30k-images folder"})
    vg_regions: str | None = field(default=None, metadata={"help": "Visual Genome region_descriptions.json"})
    vg_images: str | None = field(default=None, metadata={"help": "Visual Genome image folder"})
    lvis_annotations: str | None = field(default=None, metadata={"help": "lvis_v1_val.json (eval)"})
    lvis_images: str | None = field(default=None, metadata={"help": "COCO folder holding the LVIS images"})
    conversations: list[str] = field(default_factory=list, metadata={"help": "LLaVA / Groma-Instruct jsons"})
    conversation_images: str | None = field(default=None, metadata={"help": "image folder of the conversations"})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Cap per real eval set."})
    # instruct options
    freeze_llm: bool = field(default=False, metadata={"help": "instruct with the LLM frozen (ablation)."})
    use_lora: bool = field(default=False, metadata={"help": "instruct: LoRA on the LLM instead of full training."})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    template: Literal["auto", "llava", "default"] = field(
        default="auto", metadata={"help": "Conversation template; auto: 'default' in align, 'llava' in instruct."}
    )
    ablation_frozen_llm: bool = field(default=False, metadata={"help": "all: also run instruct with the LLM "
                                                                "frozen and evaluate it (an extra table row)."})  # fmt: skip
    # evaluation
    eval_tasks: list[str] = field(
        default_factory=lambda: ["proposer", "rec", "grounded_caption", "region_caption"],
        metadata={"help": "proposer | rec | grounded_caption | region_caption | lvis"},
    )
    eval_batch_size: int = field(default=32)
    proposer_topk: int = field(default=100)

    def __post_init__(self):
        """Check ranges when the arguments are parsed, before any model or data is loaded."""
        check_positive(self, "eval_batch_size", "proposer_topk", "lora_r", "lora_alpha")
        check_positive(self, "toy_train_scenes", "toy_eval_scenes", allow_zero=True)
        check_positive(self, "image_size", "eval_max_samples", allow_none=True)
        n = self.toy_num_objects
        check_arg(len(n) == 2 and 1 <= n[0] <= n[1], "toy_num_objects", n, "two numbers MIN MAX with 1 <= MIN <= MAX")
        for task in self.eval_tasks:
            check_arg(task in EVAL_TASKS, "eval_tasks", task, f"of {' | '.join(EVAL_TASKS)}")
        if len(self.det_images) != len(self.det_annotations) or (
            self.det_sources and len(self.det_sources) != len(self.det_annotations)
        ):
            raise RecipeError(
                f"--det_annotations ({len(self.det_annotations)}), --det_images ({len(self.det_images)}) and "
                f"--det_sources ({len(self.det_sources)}, or none) must give one entry per json."
            )


@dataclass
class GromaTrainingArguments(SFTConfig):
    """`SFTConfig` with the recipe's defaults. The collators do the tokenisation, so trl's dataset preparation is
    skipped and columns are kept."""

    learning_rate: float = field(default=1e-4)
    lr_scheduler_type: str = field(default="cosine")
    warmup_ratio: float = field(default=0.03)
    weight_decay: float = field(default=0.0)
    max_grad_norm: float = field(default=1.0)
    logging_steps: float = field(default=10)
    save_steps: float = field(default=200)
    save_total_limit: int | None = field(default=1)
    remove_unused_columns: bool = field(default=False)
    dataset_kwargs: dict | None = field(default_factory=lambda: {"skip_prepare_dataset": True})
    report_to: str | list[str] = field(default="none")
    dataloader_num_workers: int = field(default=0)
    gradient_checkpointing: bool = field(default=False)
    # trl's SFTConfig turns bf16 on unless fp16 is set, also on the CPU, where bf16 autocast made the toy det stage
    # ~9x slower (4 s vs 0.4 s a step on 2 cores); the GPU and paper configs ask for it (`bf16: true`).
    bf16: bool | None = field(default=False)

    def __post_init__(self):
        if self.max_steps is None or self.max_steps <= 0:  # epochs decide the length of training
            check_positive(self, "num_train_epochs")
        super().__post_init__()
