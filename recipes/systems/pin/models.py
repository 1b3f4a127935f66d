"""PIN's models: the frozen base VLM, and the trainable model of each method around it."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, set_seed

from groundvlm.modeling import PinForLocalization
from groundvlm.modeling.modeling_pin import supported_base_classes
from groundvlm.processing import PinProcessor
from groundvlm.recipes.systems.pin.arguments import PinArguments
from groundvlm.recipes.systems.pin.baselines import PeftBaseline, coop_text_prefix

DEFAULT_BASE_ASSET = "vlm-caption"


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
    from groundvlm.recipes.systems.vpgtrans.captioner import build_caption_asset

    preset = "gpu" if preset == "gpu" else "cpu"
    return str(toyworld.toy_asset(DEFAULT_BASE_ASSET, preset, builder=build_caption_asset))


def load_base(path: str, device: torch.device, processor_path: str | None = None):
    """The frozen base model (class from its config's `architectures`) and its processor (from `processor_path` when
    given: a Trainer checkpoint holds the model only)."""
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not Path(path).exists() and not looks_like_hub_id:
        raise FileNotFoundError(f"base_model {path!r} is neither a folder nor a Hub id")
    config = AutoConfig.from_pretrained(path)
    classes = supported_base_classes()
    arch = next((a for a in (config.architectures or []) if a in classes), None)
    if arch is None:
        raise ValueError(f"{path}: architectures {config.architectures} hold no PIN base; supported: {sorted(classes)}")
    try:
        processor = AutoProcessor.from_pretrained(processor_path or path)
    except OSError as err:
        raise OSError(
            f"no processor could be loaded from {processor_path or path!r} ({err}); a Trainer checkpoint holds the "
            "model only: name the folder of the base it was trained from as the processor"
        ) from err
    return classes[arch].from_pretrained(path).to(device).eval(), processor


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
    localizer = PinForLocalization.from_base(
        base, base_model_name_or_path=base_path, grid_size=processor.grid_size, image_size=processor.image_size
    )
    if method == "pin" or method == "raw":
        return localizer
    tok = processor.tokenizer
    slot = pin_args.coop_slot_token or tok.unk_token
    return PeftBaseline(
        localizer,
        method,
        num_tokens=pin_args.coop_tokens if method == "coop" else pin_args.vpt_tokens,
        coop_slot_id=tok.convert_tokens_to_ids(slot) if method == "coop" else None,
        lora_r=pin_args.lora_r,
        lora_alpha=pin_args.lora_alpha,
        lora_target_modules=pin_args.lora_target_modules,
    )
