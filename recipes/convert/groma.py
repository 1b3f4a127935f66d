"""Convert released Groma checkpoints (FoundationVision/groma-7b-finetune, -pretrain, groma-det-pretrain) to ours.

    python -m groundvlm.recipes.convert.groma --src path/to/groma-7b-finetune --dst out/groma-7b [--allow-pickle]

Reference layout (FoundationVision/groma checkpoints) -> ours:
- `perceiver.vis_encoder.*` -> `vision_model.*` (unchanged DINOv2 names);
- `perceiver.input_proj.0.{0,1}.*` -> `region_proposer.input_proj.{0,1}.*`;
- `perceiver.ddetr_transformer.*` -> `region_proposer.*`, with `encoder.layers` -> `encoder_layers`,
  `decoder.layers` -> `decoder_layers`, `fc1/fc2` -> `mlp.fc1/mlp.fc2`, decoder `self_attn.out_proj` -> `o_proj`;
  the aliased duplicates `decoder.{bbox_embed,class_embed_*}` are checked equal to their originals and dropped;
- `img_txt_bridge.{0,2}` -> `multi_modal_projector.linear_{1,2}`; `region_encoder.*` unchanged;
- `llm.model.embed_tokens` ++ `new_input_embs` and `llm.lm_head` ++ `extra_lm_head` -> native 32114-row
  `language_model.model.embed_tokens` / `language_model.lm_head` (ids >= 32000 used the extra tables: exact);
- `rotary_emb.inv_freq` buffers are dropped.
The detector-only `groma-det-pretrain` (CustomDDETRModel: `vis_encoder.*`, `input_proj.*`, `ddetr_transformer.*`)
converts to the `vision_model.*` + `region_proposer.*` subset (use it to initialise a model whose LLM comes from
Vicuna). Weights are read from safetensors; pickled `.bin` files only with `--allow-pickle` (`weights_only=True`).
"""

import argparse
import json
import re
from pathlib import Path

import torch

from groundvlm.modeling.configuration_groma import GROMA_ADDED_TOKENS, GROMA_SPECIAL_TOKENS, GromaConfig

_DDETR_ALIASES = re.compile(
    r"^perceiver\.ddetr_transformer\.decoder\.(bbox_embed|class_embed_enc|class_embed_coco|class_embed_sa1b)"
)


def _proposer_key(rest: str) -> str:
    """Name inside `ddetr_transformer.` -> name inside our `region_proposer.`."""
    match = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.*)$", rest)
    if not match:
        return rest
    part, index, name = match.groups()
    name = re.sub(r"^(fc1|fc2)\.", r"mlp.\1.", name)
    if part == "decoder":
        name = name.replace("self_attn.out_proj.", "self_attn.o_proj.")
    return f"{part}_layers.{index}.{name}"


def convert_state_dict(reference: dict[str, torch.Tensor], detector_only: bool = False) -> dict[str, torch.Tensor]:
    """Reference state dict -> ours. Raises ValueError on any key it does not know (nothing is silently lost)."""
    if detector_only:
        reference = {f"perceiver.{k}": v for k, v in reference.items()}
    converted, unknown = {}, []
    for key, value in reference.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if _DDETR_ALIASES.match(key):
            original = key.replace("ddetr_transformer.decoder.", "ddetr_transformer.", 1)
            if original not in reference or not torch.equal(reference[original], value):
                raise ValueError(f"aliased key {key} does not equal {original}; the checkpoint is not the expected one")
            continue
        if key.startswith("perceiver.vis_encoder."):
            converted["vision_model." + key[len("perceiver.vis_encoder.") :]] = value
        elif key.startswith("perceiver.input_proj.0."):
            converted["region_proposer.input_proj." + key[len("perceiver.input_proj.0.") :]] = value
        elif key.startswith("perceiver.ddetr_transformer."):
            converted["region_proposer." + _proposer_key(key[len("perceiver.ddetr_transformer.") :])] = value
        elif key.startswith("img_txt_bridge."):
            index, name = key[len("img_txt_bridge.") :].split(".", 1)
            layer = {"0": "linear_1", "2": "linear_2"}.get(index)
            if layer is None:
                unknown.append(key)
                continue
            converted[f"multi_modal_projector.{layer}.{name}"] = value
        elif key.startswith("region_encoder."):
            converted[key] = value
        elif key in (
            "llm.model.embed_tokens.weight",
            "new_input_embs.weight",
            "llm.lm_head.weight",
            "extra_lm_head.weight",
        ):
            continue  # concatenated below
        elif key.startswith("llm."):
            converted["language_model." + key[len("llm.") :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"unknown keys in the reference checkpoint: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    if not detector_only:
        for ours, (base, extra) in {
            "language_model.model.embed_tokens.weight": ("llm.model.embed_tokens.weight", "new_input_embs.weight"),
            "language_model.lm_head.weight": ("llm.lm_head.weight", "extra_lm_head.weight"),
        }.items():
            if base not in reference or extra not in reference:
                raise ValueError(f"the checkpoint lacks {base} or {extra}")
            converted[ours] = torch.cat((reference[base], reference[extra]), dim=0)
    return converted


def convert_config(reference: dict) -> GromaConfig:
    """Reference `config.json` (model_type groma; sub-configs serialised as diffs) -> GromaConfig."""
    llm = dict(reference.get("llm_cfg") or {})
    perceiver = reference.get("perceiver_cfg") or {}
    vision = {k: v for k, v in (perceiver.get("vis_encoder_cfg") or {}).items() if k != "model_type"}
    ddetr = perceiver.get("ddetr_cfg") or {}
    if ddetr.get("num_feature_levels", 4) != 1:
        raise ValueError("only the released single-level proposer (num_feature_levels=1) is supported")
    if perceiver.get("vis_output_layer", -1) != -1:
        raise ValueError("only vis_output_layer=-1 (the released setting) is supported")
    num_new = reference.get("num_new_token", len(GROMA_ADDED_TOKENS))
    base_vocab = llm.get("vocab_size", 32000)
    num_proxy = num_new - len(GROMA_SPECIAL_TOKENS)
    ids = {tok: base_vocab + i for i, tok in enumerate(GROMA_SPECIAL_TOKENS)}
    llm = {k: v for k, v in llm.items() if k not in ("model_type", "architectures", "_name_or_path")}
    llm.update(vocab_size=base_vocab + num_new, pad_token_id=ids["[PAD]"], tie_word_embeddings=False)
    llama_defaults = dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    text_config = {"model_type": "llama", **llama_defaults, **llm}
    vision_defaults = dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=518
    )
    return GromaConfig(
        vision_config={**vision_defaults, **vision},
        text_config=text_config,
        proposer_d_model=ddetr.get("d_model", 256),
        proposer_encoder_layers=ddetr.get("encoder_layers", 6),
        proposer_decoder_layers=ddetr.get("decoder_layers", 6),
        proposer_attention_heads=ddetr.get("encoder_attention_heads", 8),
        proposer_ffn_dim=ddetr.get("encoder_ffn_dim", 1024),
        proposer_n_points=ddetr.get("encoder_n_points", 4),
        proposer_num_queries=ddetr.get("two_stage_num_proposals", 300),
        proposer_dropout=ddetr.get("dropout", 0.1),
        region_box_quirk=True,  # the released weights were trained with the centre-format RoI boxes
        vision_legacy_pos_interpolation=True,
        nms_threshold=reference.get("nms_thres", 0.6),
        box_score_threshold=reference.get("box_score_thres", 0.15),
        max_region_num=reference.get("max_region_num", 100),
        pad_token_id=ids["[PAD]"],
        image_token_id=ids["<image>"],
        region_token_id=ids["<region>"],
        refer_box_token_id=ids["<refer_box>"],
        ground_box_token_id=ids["<ground_box>"],
        refer_feat_token_id=ids["<refer_feat>"],
        proxy_token_start_id=base_vocab + len(GROMA_SPECIAL_TOKENS),
        num_proxy_tokens=num_proxy,
    )


def load_reference_state_dict(src: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: *.safetensors (sharded or not), else *.bin only if `allow_pickle`."""
    from safetensors.torch import load_file

    safetensors = sorted(src.glob("*.safetensors"))
    if safetensors:
        state = {}
        for path in safetensors:
            state.update(load_file(path))
        return state
    bins = sorted(p for p in src.glob("*.bin") if p.name != "training_args.bin")
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or *.bin weights in {src}")
    if not allow_pickle:
        raise ValueError(
            f"{src} only has pickled weights ({bins[0].name}); pass --allow-pickle to read them with "
            "torch.load(weights_only=True)"
        )
    state = {}
    for path in bins:
        state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    return state


REMOTE_CODE_FILES = (
    "configuration_groma.py",
    "modeling_groma.py",
    "groma_proposer.py",
    "groma_region_encoder.py",
    "groma_cuda_graphs.py",
    "deferred_stop.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_groma.GromaConfig",
    "AutoModel": "modeling_groma.GromaForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_groma.GromaForConditionalGeneration",
}


def write_pretrained(state: dict[str, torch.Tensor], config: GromaConfig, dst, max_shard_size: str = "5GB") -> None:
    """A `from_pretrained` folder: safetensors shards (+ index), config.json with auto_map, the remote-code files.

    DINOv2 keys stay in the reference's (= transformers' on-disk) names; every 5.x release maps them on load.
    """
    import shutil

    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    import groundvlm.modeling as modeling_package

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["GromaForConditionalGeneration"]
    config.save_pretrained(dst)
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(Path(modeling_package.__file__).parent / name, dst / name)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k].contiguous() for k in keys}, str(dst / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def convert_checkpoint(
    src, dst, allow_pickle: bool = False, dtype: str = "float32", config: GromaConfig | None = None, verify: bool = True
):
    """Convert a full reference checkpoint folder into a safetensors `from_pretrained` folder.

    With `verify`, the result is loaded back and must have no missing or unexpected keys (returns that model).
    For the detector-only layout use `--detector-only` (writes the `vision_model.*` + `region_proposer.*` subset).
    """
    src = Path(src)
    if config is None:
        config = convert_config(json.loads((src / "config.json").read_text()))
    state = convert_state_dict(load_reference_state_dict(src, allow_pickle))
    state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
    write_pretrained(state, config, dst)
    del state
    if not verify:
        return None
    from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration

    model, info = GromaForConditionalGeneration.from_pretrained(
        dst, output_loading_info=True, dtype=getattr(torch, dtype)
    )
    if info["missing_keys"] or info["unexpected_keys"] or info.get("mismatched_keys"):
        raise ValueError(f"converted checkpoint does not match the model: {info}")
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="reference checkpoint folder (config.json + weights)")
    parser.add_argument("--dst", required=True, help="output folder (safetensors + config + remote code)")
    parser.add_argument("--allow-pickle", action="store_true", help="read pytorch_model*.bin (weights_only=True)")
    parser.add_argument("--detector-only", action="store_true", help="groma-det-pretrain: write the perceiver subset")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-verify", action="store_true", help="skip loading the result back (saves memory)")
    args = parser.parse_args(argv)
    if args.detector_only:
        from safetensors.torch import save_file

        state = convert_state_dict(load_reference_state_dict(Path(args.src), args.allow_pickle), detector_only=True)
        Path(args.dst).mkdir(parents=True, exist_ok=True)
        dtype = getattr(torch, args.dtype)
        save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(Path(args.dst) / "model.safetensors"))
    else:
        convert_checkpoint(args.src, args.dst, args.allow_pickle, args.dtype, verify=not args.no_verify)


if __name__ == "__main__":
    main()
