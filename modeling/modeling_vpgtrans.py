"""VPGTrans model: the BLIP-2 VL-LLM (ViT -> Q-Former -> linear projector -> LLM) under transformers' names.

VPGTrans (Zhang et al., NeurIPS 2023) moves a visual prompt generator between LLMs; the VL-LLM it produces is
a plain BLIP-2. `VPGTransModel` therefore *is* transformers' `Blip2ForConditionalGeneration` (same parameter
names: `vision_model.`, `qformer.`, `query_tokens`, `language_projection.`, `language_model.`), so an HF BLIP-2
checkpoint folder loads with `VPGTransModel.from_pretrained(path)` and gives identical logits and generations.
What it adds:

- clear errors when the `<image>` placeholders and the images do not match (instead of a failure deep inside
  `masked_scatter`);
- `generate()` without a prompt also for encoder-decoder LLMs (T5 has no BOS);
- reference initialisation of `query_tokens` (N(0, `config.init_query_tokens_std`)) for training from scratch;
- `save_pretrained` writes `auto_map` for AutoConfig / AutoModel / AutoModelForImageTextToText (remote code).

Where things are (for wrappers such as PIN):
- vision-encoder output, post-LayerNorm (= LAVIS `ln_vision` output), shape [B, 1 + num_patches, vision_hidden]:
  `model.vision_model(pixel_values).last_hidden_state`. `get_image_features` and `generate` both call
  `self.vision_model`, so a forward hook on `model.vision_model` that edits `last_hidden_state` reaches every
  path. Do not hook `vision_model.post_layernorm`: it is applied a second time to the pooled CLS token.
- Q-Former output, [B, num_query_tokens, qformer_hidden]: `model.get_image_features(pixel_values).qformer_outputs`.
- projected visual prompts, [B, num_query_tokens, lm_hidden]: `model.get_image_features(pixel_values).pooler_output`.
"""

import torch
from transformers import Blip2ForConditionalGeneration, GenerationMixin
from transformers import initialization as init

from .configuration_vpgtrans import VPGTransConfig
from .deferred_stop import deferred_stop_check


class VPGTransModel(Blip2ForConditionalGeneration, GenerationMixin):
    r"""
    BLIP-2 VL-LLM used by VPGTrans. Inputs as in `Blip2ForConditionalGeneration`:

    - `pixel_values`: [B, 3, H, W] float.
    - `input_ids`: [B, L] with exactly `config.num_query_tokens` `<image>` ids (`config.image_token_index`) per
      row; the projected queries replace those positions (`VPGTransProcessor` prepends them).
    - `attention_mask`: [B, L]; `labels`: [B, L] (decoder-only, -100 = ignored) or [B, T] decoder targets (T5).

    Returns `Blip2ForConditionalGenerationModelOutput` (`loss`, `logits` [B, L, vocab] / [B, T, vocab], ...).
    """

    config_class = VPGTransConfig
    config: VPGTransConfig

    def __init__(self, config: VPGTransConfig):
        super().__init__(config)
        # The loss is picked from the class-name suffix, which "VPGTransModel" does not have; BLIP-2's
        # decoder-only loss is the causal-LM one (T5 computes its own loss inside the LLM).
        self.loss_type = "ForCausalLM"

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        # transformers zero-initialises the queries (fine for loading weights); the reference BLIP-2 draws them
        # from N(0, 0.02), which training from scratch needs. `init.*` skips tensors that were loaded.
        if module is self and self.config.init_query_tokens_std is not None:
            init.normal_(module.query_tokens, mean=0.0, std=self.config.init_query_tokens_std)

    def _check_image_placeholders(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor | None) -> None:
        """Raise a ValueError unless every row of `input_ids` holds `num_query_tokens` `<image>` ids, one image each."""
        if input_ids is None or pixel_values is None:
            return
        if self.config.image_token_index is None:
            raise ValueError(
                "config.image_token_index is not set: the model cannot tell where the visual prompts go. Set it "
                "to the id of the '<image>' token of the LLM tokenizer."
            )
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"Got {pixel_values.shape[0]} images for {input_ids.shape[0]} text rows; BLIP-2/VPGTrans takes exactly "
                "one image per row."
            )
        per_row = (input_ids == self.config.image_token_index).sum(dim=-1)
        expected = self.config.num_query_tokens
        if not bool((per_row == expected).all()):
            raise ValueError(
                f"Image token count mismatch: each row must contain num_query_tokens={expected} '<image>' tokens "
                f"(id {self.config.image_token_index}), got {per_row.tolist()}. Build inputs with VPGTransProcessor "
                "(it prepends them) and do not truncate them away."
            )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ):
        r"""Shapes as in the class docstring; extra kwargs (e.g. `num_items_in_batch`) go to the LLM and the loss."""
        if pixel_values is None and kwargs.get("mm_encoder_outputs") is None:
            raise ValueError("VPGTransModel.forward needs `pixel_values` [B, 3, H, W].")
        if input_ids is None and inputs_embeds is None:
            raise ValueError(
                "VPGTransModel.forward needs `input_ids` (with the '<image>' placeholders) or `inputs_embeds`."
            )
        self._check_image_placeholders(pixel_values, input_ids)
        return super().forward(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            interpolate_pos_encoding=interpolate_pos_encoding,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        defer_stop_check: bool = True,
        **generate_kwargs,
    ) -> torch.LongTensor:
        r"""
        Generate text for `pixel_values` [B, 3, H, W], optionally continuing `input_ids` [B, L] (a prompt with
        the `<image>` placeholders, left-padded for decoder-only LLMs).

        Without a prompt the input is `[<image>] * num_query_tokens` followed by what the reference's empty
        prompt tokenises to: BOS for decoder-only LLMs (as transformers' BLIP-2) and EOS for T5 (whose tokenizer
        has no BOS and appends `</s>`). Stopping follows `generation_config` (VPGTrans stops on the "\n" id for
        decoder-only LLMs; `build_target_model` sets it). Returns [B, L + new] ids for decoder-only LLMs (the
        prompt included, as transformers does) and [B, new] decoder ids for T5. On the current CUDA device the stop
        check after each token is read one step late (`defer_stop_check`, see `deferred_stop.py`): same tokens, no
        per-token host sync.
        """
        if input_ids is None and inputs_embeds is None:
            text_config = self.config.text_config
            start_id = (
                text_config.bos_token_id if self.config.use_decoder_only_language_model else text_config.eos_token_id
            )
            if self.config.image_token_index is None:
                raise ValueError("config.image_token_index is not set; cannot build the '<image>' placeholders.")
            start = [self.config.image_token_index] * self.config.num_query_tokens
            if start_id is not None:
                start.append(start_id)
            input_ids = torch.tensor([start], dtype=torch.long, device=pixel_values.device).repeat(
                pixel_values.shape[0], 1
            )
        self._check_image_placeholders(pixel_values, input_ids)
        with deferred_stop_check(defer_stop_check, generate_kwargs):
            return super().generate(
                pixel_values=pixel_values,
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                interpolate_pos_encoding=interpolate_pos_encoding,
                **generate_kwargs,
            )

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` keeps a single Auto class per model class; users (and trl, which looks for
        # AutoModelForImageTextToText first) load through several, so all entries are written here.
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(
            {
                "AutoConfig": "configuration_vpgtrans.VPGTransConfig",
                "AutoModel": "modeling_vpgtrans.VPGTransModel",
                "AutoModelForImageTextToText": "modeling_vpgtrans.VPGTransModel",
            }
        )
        self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


VPGTransModel.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["VPGTransModel"]
