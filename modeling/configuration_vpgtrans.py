"""VPGTrans configuration: a BLIP-2 configuration under its own `model_type`.

VPGTrans (Zhang et al., NeurIPS 2023) transfers a BLIP-2 visual prompt generator (VPG = ViT + Q-Former +
query tokens) from one LLM to another. The model itself is exactly BLIP-2, so the configuration is
transformers' `Blip2Config` (vision_config / qformer_config / text_config, num_query_tokens,
image_token_index) with one extra field for training from scratch. Subclassing keeps the sub-config
handling of whichever transformers 5.x is installed.
"""

from transformers import Blip2Config


class VPGTransConfig(Blip2Config):
    r"""
    Configuration of [`VPGTransModel`]; every `Blip2Config` argument is accepted unchanged.

    Args:
        vision_config (`dict` or `Blip2VisionConfig`): the ViT (EVA-like). Note: transformers'
            `Blip2VisionConfig.initializer_range` defaults to 1e-10, which is meant for loading weights; to train
            a ViT from scratch pass `vision_config={..., "initializer_range": 0.02}` (with 1e-10 the ViT output
            does not depend on the image).
        qformer_config (`dict` or `Blip2QFormerConfig`): the Q-Former.
        text_config (`dict` or `PreTrainedConfig`): the LLM (OPT/LLaMA -> decoder-only, T5 -> encoder-decoder).
        num_query_tokens (`int`, defaults to 32): number of learned queries = number of `<image>` placeholders.
        image_token_index (`int`): id of the `<image>` placeholder token in the LLM tokenizer.
        init_query_tokens_std (`float` or `None`, defaults to 0.02): standard deviation of the normal draw used
            to initialise `query_tokens` when a model is built from this config (not when weights are loaded:
            loaded tensors are never re-initialised). 0.02 follows the reference BLIP-2 code, which draws the
            queries from N(0, 0.02); `None` keeps transformers' zeros.

    A `config.json` written for transformers' BLIP-2 (`model_type="blip-2"`) loads into this class.
    """

    model_type = "vpgtrans"

    init_query_tokens_std: float | None = 0.02

    # Folders saved by transformers' Blip2ForConditionalGeneration carry model_type "blip-2"; they describe
    # exactly this architecture, so they are accepted (anything else is refused with a clear error).
    _compatible_model_types = ("vpgtrans", "blip-2")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and cls is VPGTransConfig:
            if model_type not in cls._compatible_model_types:
                raise ValueError(
                    f"{pretrained_model_name_or_path} holds a config of model_type={model_type!r}; VPGTransConfig "
                    f"loads only {cls._compatible_model_types} (a BLIP-2 / VPGTrans checkpoint)."
                )
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs


VPGTransConfig.register_for_auto_class()

__all__ = ["VPGTransConfig"]
