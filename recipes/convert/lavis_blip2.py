"""Convert LAVIS BLIP-2 / VPGTrans checkpoints (`.pth`) into a `VPGTransModel` (safetensors).

LAVIS saves `{"model": state_dict, "optimizer", "config", "scaler", "epoch"}`; its `model` dict usually holds
only the trainable parameters (query_tokens, ln_vision, Qformer, {opt,t5,llama}_proj) and some buffers, so a
converted checkpoint is merged onto a full *base* model (an HF BLIP-2 or VPGTrans folder holding the ViT and the
LLM). Several checkpoints apply in order, as the reference's loading order (stage-1 `blip2_pretrained.pth`, then
the Q-Former of a BLIP-2 OPT checkpoint, then a projector from the word converter or stage 1).

Key map (as transformers' BLIP-2 conversion script, models/blip_2/convert_blip_2_original_to_pytorch.py):
    ln_vision.*                            -> vision_model.post_layernorm.*
    visual_encoder.cls_token / pos_embed   -> vision_model.embeddings.class_embedding / position_embedding
    visual_encoder.patch_embed.proj.*      -> vision_model.embeddings.patch_embedding.*
    visual_encoder.blocks.i.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}
                                           -> vision_model.encoder.layers.i.{layer_norm1,layer_norm2,
                                              self_attn.qkv,self_attn.projection,mlp.fc1,mlp.fc2}
    visual_encoder.blocks.i.attn.{q_bias,v_bias} -> ...self_attn.qkv.bias = cat(q_bias, 0, v_bias)
                                              (EVA has no key bias)
    Qformer.bert.embeddings.LayerNorm.*    -> qformer.layernorm.*
    Qformer.bert.encoder.*                 -> qformer.encoder.*  (attention.self -> attention.attention)
    {opt,t5,llama}_proj.*                  -> language_projection.*
    {opt,t5,llama}_model.*                 -> language_model.*
    query_tokens                           -> query_tokens
Stage-1 (`blip2_pretrained.pth`) parts without a place in BLIP-2's generative model — the Q-Former text branch
(word/position embeddings, text FFN `intermediate`/`output`), `vision_proj`, `text_proj`, `itm_head`, `temp`,
`Qformer.cls` — are dropped, or with `keep_stage1_heads=True` mapped to transformers'
`Blip2ForImageTextRetrieval` names (`embeddings.*`, `qformer.encoder.layer.i.{intermediate,output}.*`,
`vision_projection`, `text_projection`, `itm_head`; `temp` and `Qformer.cls` have no HF counterpart).

Usage:
    python -m groundvlm.recipes.convert.lavis_blip2 --base <hf_blip2_or_vpgtrans_dir> \\
        --checkpoint blip2_pretrained_opt6.7b.pth [--checkpoint linear_proj.pth] --output <dir>
"""

import argparse
import logging
import pickle
import re
from pathlib import Path

import torch

from groundvlm.modeling.modeling_vpgtrans import VPGTransModel

logger = logging.getLogger(__name__)

_VIT_BLOCK_RENAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_TOP_RENAMES = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
}
_STAGE1_HEADS = {
    "Qformer.bert.embeddings.word_embeddings.": "embeddings.word_embeddings.",
    "Qformer.bert.embeddings.position_embeddings.": "embeddings.position_embeddings.",
    "vision_proj.": "vision_projection.",
    "text_proj.": "text_projection.",
    "itm_head.": "itm_head.",
}
# Stage-1 pieces with no transformers counterpart at all (the ITG LM head and the contrastive temperature).
_ALWAYS_DROPPED = (re.compile(r"^Qformer\.cls\."), re.compile(r"^temp$"))
# Non-persistent buffers some LAVIS versions saved.
_BUFFERS = (re.compile(r"position_ids$"), re.compile(r"rotary_emb\.inv_freq$"))
_QFORMER_TEXT_FFN = re.compile(r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate|output)\.")


def load_lavis_state_dict(path: str | Path, *, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a LAVIS `.pth` (its `model` dict, or a bare state dict) or a `.safetensors` file.

    `.pth` files are read with `torch.load(weights_only=True)`; a file that needs arbitrary unpickling is
    refused unless `allow_unsafe_pickle=True` (only for files you trust). Entries that are not tensors (the
    reference stores `None` for keys it wants skipped) are left out.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_unsafe_pickle:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True): it pickles objects other than "
                "tensors and plain containers. Pass allow_unsafe_pickle=True (--allow-unsafe-pickle) only if you "
                "trust the file."
            ) from err
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a LAVIS checkpoint dict.")
    state_dict = checkpoint.get("model", checkpoint)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: the 'model' entry is a {type(state_dict).__name__}, not a state dict.")
    return {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def convert_lavis_state_dict(
    state_dict: dict[str, torch.Tensor], *, keep_stage1_heads: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename LAVIS keys to `Blip2ForConditionalGeneration` / `VPGTransModel` keys.

    Returns `(converted, dropped_keys)`. Raises ValueError listing any key it does not know (so nothing is
    silently lost) and when a block has only one of `q_bias` / `v_bias`.
    """
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    qv_bias: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if any(p.search(key) for p in _BUFFERS) or any(p.search(key) for p in _ALWAYS_DROPPED):
            dropped.append(key)
            continue
        head = next((k for k in _STAGE1_HEADS if key.startswith(k)), None)
        if head is not None or _QFORMER_TEXT_FFN.match(key):
            if not keep_stage1_heads:
                dropped.append(key)
            elif head is not None:
                converted[_STAGE1_HEADS[head] + key[len(head) :]] = value
            else:
                converted[key.replace("Qformer.bert.", "qformer.", 1)] = value
            continue
        new_key = _rename(key)
        if new_key is None:
            match = re.match(r"^visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)$", key)
            if match:
                qv_bias.setdefault(match.group(1), {})[match.group(2)] = value
            else:
                unknown.append(key)
            continue
        converted[new_key] = value
    for block, biases in qv_bias.items():
        if set(biases) != {"q_bias", "v_bias"}:
            raise ValueError(
                f"visual_encoder.blocks.{block}.attn has {sorted(biases)} but needs both q_bias and v_bias."
            )
        q, v = biases["q_bias"], biases["v_bias"]
        converted[f"vision_model.encoder.layers.{block}.self_attn.qkv.bias"] = torch.cat((q, torch.zeros_like(v), v))
    if unknown:
        raise ValueError(
            f"Unknown LAVIS keys (not converted): {sorted(unknown)[:20]}{' ...' if len(unknown) > 20 else ''}"
        )
    return converted, dropped


def _rename(key: str) -> str | None:
    if key in _VIT_TOP_RENAMES:
        return _VIT_TOP_RENAMES[key]
    if key == "query_tokens":
        return key
    if key.startswith("ln_vision."):
        return "vision_model.post_layernorm." + key[len("ln_vision.") :]
    match = re.match(
        r"^visual_encoder\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", key
    )
    if match:
        block, part, param = match.groups()
        if part == "attn.qkv" and param == "bias":
            return None
        return f"vision_model.encoder.layers.{block}.{_VIT_BLOCK_RENAMES[part]}.{param}"
    if key.startswith("Qformer.bert.embeddings.LayerNorm."):
        return "qformer.layernorm." + key[len("Qformer.bert.embeddings.LayerNorm.") :]
    if key.startswith("Qformer.bert.encoder."):
        new = "qformer.encoder." + key[len("Qformer.bert.encoder.") :]
        return re.sub(r"\.(attention|crossattention)\.self\.", r".\1.attention.", new)
    match = re.match(r"^(opt|t5|llama)_proj\.(weight|bias)$", key)
    if match:
        return f"language_projection.{match.group(2)}"
    match = re.match(r"^(opt|t5|llama)_model\.(.+)$", key)
    if match:
        return f"language_model.{match.group(2)}"
    return None


def convert_lavis_checkpoint(
    checkpoints: str | Path | list[str | Path],
    base: str | Path | VPGTransModel,
    output_dir: str | Path | None = None,
    *,
    allow_unsafe_pickle: bool = False,
) -> VPGTransModel:
    """Load `base` (a VPGTransModel or a folder with an HF BLIP-2 / VPGTrans checkpoint), overwrite it with each
    LAVIS checkpoint in order, optionally `save_pretrained(output_dir)` (safetensors), and return the model.

    Raises ValueError for keys the model does not have and for shape mismatches (e.g. a checkpoint made for
    another LLM size: its projector or Q-Former hidden sizes differ from the base's config).
    """
    model = base if isinstance(base, VPGTransModel) else VPGTransModel.from_pretrained(base)
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise ValueError("Give at least one LAVIS checkpoint.")
    expected = model.state_dict()
    for path in paths:
        converted, dropped = convert_lavis_state_dict(
            load_lavis_state_dict(path, allow_unsafe_pickle=allow_unsafe_pickle)
        )
        missing_in_model = sorted(k for k in converted if k not in expected)
        if missing_in_model:
            raise ValueError(f"{path}: keys with no place in the model: {missing_in_model[:20]}")
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
            for k, v in converted.items()
            if tuple(v.shape) != tuple(expected[k].shape)
        ]
        if mismatched:
            raise ValueError(
                f"{path}: mismatched shapes (hidden sizes of the checkpoint and the base config differ):\n  "
                + "\n  ".join(mismatched[:20])
            )
        with torch.no_grad():
            for key, value in converted.items():
                expected[key].copy_(value.to(dtype=expected[key].dtype))
        logger.info("%s: loaded %d tensors, dropped %d (%s)", path, len(converted), len(dropped), dropped[:5])
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="LAVIS .pth (repeat to apply in order)")
    parser.add_argument("--base", required=True, help="HF BLIP-2 or VPGTrans folder providing the full model")
    parser.add_argument("--output", required=True, help="output folder (safetensors)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true", help="allow full unpickling (trusted files only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    convert_lavis_checkpoint(args.checkpoint, args.base, args.output, allow_unsafe_pickle=args.allow_unsafe_pickle)


if __name__ == "__main__":
    main()
