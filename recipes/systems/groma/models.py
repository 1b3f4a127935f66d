"""Build, freeze and load Groma for each training stage.

A new Groma is assembled from a DINOv2 checkpoint and a Llama checkpoint (the toy world's `vision-dinov2` and
`lm-llama` assets by default; DINOv2-L/14 and Vicuna-7B-v1.5 for the paper), with Groma's 114 tokens added to the
tokenizer and as new LLM rows. Later stages load the previous stage's `save_pretrained` folder.

What each stage trains (FoundationVision/groma scripts/det_pretrain.sh, vl_pretrain.sh, vl_finetune.sh):
    det:      the region proposer (input_proj + Deformable-DETR); DINOv2 frozen
    align:    projector, region encoder, the embedding / output rows of the added tokens; LLM and perceiver frozen
    instruct: the above + the whole LLM (or LoRA adapters on it); perceiver frozen
"""

from __future__ import annotations

import logging
import types
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, Dinov2Model, set_seed

from groundvlm.modeling import GromaForConditionalGeneration
from groundvlm.modeling.configuration_groma import GromaConfig
from groundvlm.processing import GromaImageProcessor, GromaProcessor, add_groma_tokens

logger = logging.getLogger("groundvlm")

STAGES = ("det", "align", "instruct")

# Proposer / region-encoder sizes of the toy Groma per preset. The released model's values are GromaConfig's
# defaults (d_model 256, 6 + 6 layers, 300 queries, 3 region levels, 5 fusion rounds, 14x14 RoIs, 100 regions).
TOY_GROMA_SIZES = {
    "cpu": dict(
        proposer_d_model=128, proposer_encoder_layers=2, proposer_decoder_layers=2, proposer_attention_heads=4,
        proposer_ffn_dim=256, proposer_num_queries=64, proposer_dropout=0.0, region_feature_layers=1,
        region_fusion_rounds=1, region_gn_groups=32, region_roi_size=7, region_pos_embed_dim=64,
        max_region_num=16,
    ),
    "gpu": dict(
        proposer_d_model=256, proposer_encoder_layers=3, proposer_decoder_layers=3, proposer_attention_heads=8,
        proposer_ffn_dim=512, proposer_num_queries=100, proposer_dropout=0.0, region_feature_layers=3,
        region_fusion_rounds=2, region_gn_groups=32, region_roi_size=7, region_pos_embed_dim=128,
        max_region_num=30,
    ),
}  # fmt: skip
TOY_GROMA_SIZES["gpu-small"] = TOY_GROMA_SIZES["cpu"]


def build_groma(
    vision_path: str, llm_path: str, seed: int, max_positions: int = 1024, region_box_quirk: bool = False, **sizes
) -> tuple[GromaForConditionalGeneration, GromaProcessor]:
    """A new Groma from a DINOv2 folder and a Llama folder (with its tokenizer).

    The input size is the DINOv2 config's `image_size` (toy: 112 px, patch 7; pass `image_size=448` for DINOv2-L,
    whose config keeps 518). `region_box_quirk` defaults to False for new models: the reference's cxcywh-as-corners
    RoI bug (upstream #11, #21) matters for converted checkpoints, whose config sets it; pass True to train exactly
    as the reference. New token rows: embeddings = the mean of the LLM's embeddings (the reference's
    `new_input_embs` init), output rows ~ N(0, 0.02)."""
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    add_groma_tokens(tokenizer)
    vision = Dinov2Model.from_pretrained(vision_path)
    llm = AutoModelForCausalLM.from_pretrained(llm_path)
    to_id = tokenizer.convert_tokens_to_ids
    num_proxy = sizes.pop("num_proxy_tokens", sizes.get("max_region_num", 100))
    text_config = llm.config.to_dict()
    text_config.update(
        vocab_size=len(tokenizer), pad_token_id=to_id("[PAD]"), tie_word_embeddings=False,
        max_position_embeddings=max(max_positions, llm.config.max_position_embeddings),
    )  # fmt: skip
    config = GromaConfig(
        vision_config=vision.config.to_dict(), text_config=text_config,
        image_size=sizes.pop("image_size", vision.config.image_size), region_box_quirk=region_box_quirk,
        pad_token_id=to_id("[PAD]"), image_token_id=to_id("<image>"), region_token_id=to_id("<region>"),
        refer_box_token_id=to_id("<refer_box>"), ground_box_token_id=to_id("<ground_box>"),
        refer_feat_token_id=to_id("<refer_feat>"), proxy_token_start_id=to_id("<r0>"), num_proxy_tokens=num_proxy,
        vision_cuda_graphs=False, **sizes,
    )  # fmt: skip
    set_seed(seed)  # the new parameters (projector, proposer, region encoder, token rows) are seeded
    model = GromaForConditionalGeneration(config)
    model.vision_model.load_state_dict(vision.state_dict())
    base_vocab = llm.get_input_embeddings().weight.shape[0]
    state = llm.state_dict()
    embed_key = next(k for k in state if k.endswith("embed_tokens.weight"))
    old_embed, old_head = state[embed_key], state["lm_head.weight"]
    new_embed = old_embed.mean(0, keepdim=True).expand(len(tokenizer) - base_vocab, -1)
    new_head = torch.randn(len(tokenizer) - base_vocab, old_head.shape[1]) * config.initializer_range
    state[embed_key] = torch.cat((old_embed, new_embed))
    state["lm_head.weight"] = torch.cat((old_head, new_head.to(old_head.dtype)))
    model.language_model.load_state_dict(state)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    size = config.image_size
    processor = GromaProcessor(
        GromaImageProcessor(size={"height": size, "width": size}), tokenizer,
        num_image_tokens=config.num_image_tokens, num_proxy_tokens=num_proxy,
    )  # fmt: skip
    return model, processor


def build_toy_groma(preset: str, seed: int) -> tuple[GromaForConditionalGeneration, GromaProcessor]:
    """The toy Groma: the toy world's DINOv2-shaped encoder and Llama-style LM (built and cached on first use)."""
    from groundvlm.recipes.toyworld import toy_asset

    asset_preset = "gpu" if preset == "gpu" else "cpu"
    vision, llm = toy_asset("vision-dinov2", asset_preset), toy_asset("lm-llama", asset_preset)
    return build_groma(str(vision), str(llm), seed, **TOY_GROMA_SIZES[preset])


def load_groma(path: str | Path) -> tuple[GromaForConditionalGeneration, GromaProcessor]:
    """A Groma checkpoint folder written by a previous stage (model + processor)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no Groma checkpoint (no config.json); run the previous stage first")
    model = GromaForConditionalGeneration.from_pretrained(path)
    model.config.vision_cuda_graphs = False  # training and eval here run eagerly
    return model, GromaProcessor.from_pretrained(path)


def _keep_in_eval(module: nn.Module) -> None:
    """Frozen modules stay in eval mode (no dropout) when the Trainer calls `model.train()` on the whole model."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), module)


def new_token_rows(model: GromaForConditionalGeneration) -> int:
    """Id of the first added token (`[PAD]`): rows from here on are Groma's (the reference's new_input_embs)."""
    return model.config.pad_token_id


def freeze_for_stage(model: GromaForConditionalGeneration, stage: str, train_llm: bool = True) -> None:
    """Set `requires_grad` as the reference's stage scripts do (see the module docstring).

    align (and instruct) train the added tokens' rows only of the LLM's input and output embeddings: a gradient
    hook zeroes the base vocabulary's rows, which is what the reference's separate `new_input_embs` /
    `extra_lm_head` modules amount to. `train_llm=False` in instruct is the frozen-LLM ablation."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    model.requires_grad_(False)
    _keep_in_eval(model.vision_model)
    if stage == "det":
        model.region_proposer.requires_grad_(True)
        return
    _keep_in_eval(model.region_proposer)
    model.multi_modal_projector.requires_grad_(True)
    model.region_encoder.requires_grad_(True)
    llm = model.language_model
    if stage == "instruct" and train_llm:
        llm.requires_grad_(True)
        return
    start = new_token_rows(model)
    for weight in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight):
        weight.requires_grad_(True)
        weight.register_hook(lambda grad, start=start: torch.cat((torch.zeros_like(grad[:start]), grad[start:])))


def apply_lora(model: GromaForConditionalGeneration, r: int, alpha: int, target_modules: list[str]):
    """LoRA adapters on the LLM (peft); the added tokens' rows, projector and region encoder stay trained."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=target_modules, lora_dropout=0.0)
    inject_adapter_in_model(config, model.language_model)
    return model


def merge_lora(model: GromaForConditionalGeneration) -> GromaForConditionalGeneration:
    """Fold injected LoRA weights into the base linears, so the saved folder is a plain Groma checkpoint."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.language_model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.language_model.get_submodule(parent_name) if parent_name else model.language_model
            setattr(parent, child, module.get_base_layer())
    return model


class RandomRegionOrder:
    """A random order of the selected regions on every call (`GromaForConditionalGeneration.region_permutation`),
    as the reference's region selection permutes its kept boxes with `torch.randperm` (groma/model/groma.py), here
    from a seeded generator so that a training run repeats. Without it the regions keep descending proposer score,
    and where training injects the ground-truth boxes (score 0.2, above most toy proposals) the answer's slot sits
    near the top in training but not at evaluation: the LLM learns to answer by rank instead of reading the regions."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
