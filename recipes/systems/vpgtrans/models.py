"""VPGTrans's models: load folders, build a VL-LLM from scratch (`tfs`) or from a source VL-LLM (`inherit`,
`converter`), and freeze it for a stage.

"VPG" = ViT + Q-Former + query tokens. The ViT and the LLM are frozen in every stage (the ViT also kept in eval
mode, as LAVIS `disabled_train`), unless `unfreeze_lm` (toy captioner only).
"""

from __future__ import annotations

import types
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    Blip2QFormerConfig,
    Blip2VisionModel,
)

from groundvlm.modeling import VPGTransConfig, VPGTransModel
from groundvlm.modeling.vpgtrans_transfer import build_target_model
from groundvlm.processing import VPGTransProcessor
from groundvlm.recipes.systems.vpgtrans.arguments import VPGTransModelArguments
from groundvlm.recipes.systems.vpgtrans.qformer import load_pretrained_qformer


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
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_query_tokens=model.config.num_query_tokens,
        max_txt_len=max_txt_len,
        is_encoder_decoder=not model.config.use_decoder_only_language_model,
    )


def load_vl_llm(path: str, max_txt_len: int) -> tuple[VPGTransModel, VPGTransProcessor]:
    model = VPGTransModel.from_pretrained(path)
    processor = VPGTransProcessor.from_pretrained(path)
    processor.max_txt_len = max_txt_len
    return model, processor


def qformer_config(
    args: VPGTransModelArguments, vision_hidden: int, text_input: bool = False, vocab_size: int = 2
) -> Blip2QFormerConfig:
    return Blip2QFormerConfig(
        hidden_size=args.qformer_hidden_size,
        num_hidden_layers=args.qformer_layers,
        num_attention_heads=args.qformer_heads,
        intermediate_size=4 * args.qformer_hidden_size,
        cross_attention_frequency=args.qformer_cross_attention_frequency,
        encoder_hidden_size=vision_hidden,
        use_qformer_text_input=text_input,
        vocab_size=vocab_size,
        pad_token_id=0,
        initializer_range=0.02,
        max_position_embeddings=max(64, args.max_txt_len + 8),
    )


def build_from_scratch(args: VPGTransModelArguments, vision_path: str, lm_path: str):
    """The `tfs` VL-LLM: pretrained ViT + pretrained LLM, a new (or BLIP-like pretrained) Q-Former and projector.

    The Q-Former gets a real initialisation (std 0.02, queries N(0, 0.02)); BLIP-2's vision config default of
    1e-10 is meant for loading weights, not for training from scratch."""
    vision = Blip2VisionModel.from_pretrained(vision_path)
    lm, tokenizer = load_language_model(lm_path)
    processor = VPGTransProcessor(
        image_processor=AutoImageProcessor.from_pretrained(vision_path),
        tokenizer=tokenizer,
        num_query_tokens=args.num_query_tokens,
        max_txt_len=args.max_txt_len,
        is_encoder_decoder=lm.config.is_encoder_decoder,
    )
    if processor.image_token_id >= lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))
    config = VPGTransConfig(
        vision_config=vision.config.to_dict(),
        qformer_config=qformer_config(args, vision.config.hidden_size).to_dict(),
        text_config=lm.config.to_dict(),
        num_query_tokens=args.num_query_tokens,
        image_token_index=processor.image_token_id,
        use_decoder_only_language_model=not lm.config.is_encoder_decoder,
    )
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


def build_inherit(args: VPGTransModelArguments, source_path: str, lm_path: str, converter=None):
    """Target VL-LLM from the source VL-LLM: VPG inherited, projector merged (converter) or random (None)."""
    source = VPGTransModel.from_pretrained(source_path)
    source_processor = VPGTransProcessor.from_pretrained(source_path)
    lm, tokenizer = load_language_model(lm_path)
    if source.language_projection.out_features != source.config.text_config.hidden_size:
        raise ValueError("The source checkpoint's projector does not match its LLM hidden size.")
    model = build_target_model(source, lm, tokenizer, converter)
    return model, make_processor(source_processor.image_processor, tokenizer, model, args.max_txt_len)


def trainable_prefixes(stage: str, unfreeze_lm: bool = False) -> tuple[str, ...]:
    """Parameter-name prefixes that train in `stage`. Everything else is frozen."""
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


def build_stage_model(stage: str, args: VPGTransModelArguments, preset: str):
    """The VL-LLM a training stage starts from, and its processor."""
    if stage in ("stage1", "stage2", "eval"):
        return load_vl_llm(resolve_path(args.init_model, preset, "init_model"), args.max_txt_len)
    if stage == "inherit":
        return build_inherit(
            args,
            resolve_path(args.source_model, preset, "source_model"),
            resolve_path(args.language_model, preset, "language_model"),
        )
    return build_from_scratch(
        args,
        resolve_path(args.vision_model, preset, "vision_model"),
        resolve_path(args.language_model, preset, "language_model"),
    )
