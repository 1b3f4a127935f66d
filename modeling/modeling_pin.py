"""PIN: a Positional Insert that unlocks object localisation in a frozen vision-language model.

`PinForLocalization` wraps a frozen base VLM and adds π = ψ(S) (see `pin_insert.py`) to the vision tokens right
before the base's fusion network:

- BLIP-2 / VPGTrans: to `vision_model(...).last_hidden_state` of shape `(B, 1 + P, D)`, which is already
  post-LayerNorm (HF `post_layernorm` is LAVIS `ln_vision`), i.e. the Q-Former's cross-attention input. The hook
  sits on `vision_model`'s output, not on `post_layernorm`, because HF applies `post_layernorm` a second time to
  the pooled CLS token.
- LLaVA: to the input of `multi_modal_projector`, i.e. the selected feature layer(s) after the CLS-drop strategy,
  of shape `(B, P [+1], D · n_layers)`.

The insert is applied by a hook that exists only for the duration of one `forward`/`generate` call of this
wrapper, so the base's own code path runs unchanged and calling the base directly gives the base's outputs.
"""

import copy
import functools
import os
import re
from contextlib import contextmanager

import torch
from torch import nn
from transformers import (
    Blip2ForConditionalGeneration,
    GenerationMixin,
    LlavaForConditionalGeneration,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file, logging

from .configuration_pin import PinConfig
from .deferred_stop import deferred_stop_check
from .modeling_vpgtrans import VPGTransModel
from .pin_insert import PinInsert

logger = logging.get_logger(__name__)

_PIN_WEIGHTS_NAME = "model.safetensors"
_BASE_SUBFOLDER = "base"
# Vision towers LLaVA-family models use, and whether they prepend a CLS token to the patch tokens.
_LLAVA_VISION_HAS_CLS = {"clip_vision_model": True, "siglip_vision_model": False}
# Loading options of `from_pretrained` that apply to the base model as well.
_BASE_LOAD_KWARGS = ("dtype", "torch_dtype", "device_map", "attn_implementation", "low_cpu_mem_usage")
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "proxies")
# A Hub repo id: "name" or "namespace/name" of letters, digits, "-", "_", "." (huggingface_hub's rule, simplified).
_HUB_ID = re.compile(r"^(?!.*(--|\.\.))[\w][\w.-]{0,95}(/[\w][\w.-]{0,95})?$")


def _is_local_reference(reference: str | None) -> bool:
    """Whether a base reference only makes sense on this machine: a folder here, or not a Hub id (absolute or
    relative path); `None`/"" (no reference) counts as local too."""
    return not reference or os.path.isdir(reference) or not _HUB_ID.match(reference)


def supported_base_classes() -> dict[str, type]:
    """Class name -> class of every base VLM PIN can wrap."""
    return {
        "Blip2ForConditionalGeneration": Blip2ForConditionalGeneration,
        "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
        "VPGTransModel": VPGTransModel,
    }


def _base_class(name: str | None) -> type:
    classes = supported_base_classes()
    if name not in classes:
        raise ValueError(f"Unknown PIN base architecture {name!r}; supported: {sorted(classes)}")
    return classes[name]


def _insert_dtype(requested, pin_state: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype ψ gets in `from_pretrained`: the requested one (a dtype, its name, or the "" entry of a per-sub-config
    dict), else, for "auto" or nothing (transformers 5 loads "auto" by default), the dtype ψ was saved in."""
    if isinstance(requested, dict):
        requested = requested.get("")
    if isinstance(requested, str) and requested != "auto":
        requested = getattr(torch, requested)
    if isinstance(requested, torch.dtype):
        return requested
    saved = [t.dtype for t in pin_state.values() if t.is_floating_point()]
    return saved[0] if saved else torch.get_default_dtype()


def _prefixed_loading_info(info: dict | None, prefix: str) -> dict:
    """A base model's `output_loading_info` report with its parameter names as seen from the wrapper."""
    info = info or {}

    def rename(entry):
        if isinstance(entry, str):
            return prefix + entry
        if isinstance(entry, tuple) and entry and isinstance(entry[0], str):  # (name, shape in file, shape in model)
            return (prefix + entry[0], *entry[1:])
        return entry

    out = {
        key: {rename(e) for e in info.get(key, ())} for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    out["error_msgs"] = list(info.get("error_msgs", []))
    return out


class _InsertionPoint:
    """Where π goes in one base model, and the shape `(num_positions, hidden_size)` it must have there."""

    def __init__(self, base: PreTrainedModel):
        name = type(base).__name__
        _base_class(name)
        self.is_llava = name == "LlavaForConditionalGeneration"
        vision = base.config.vision_config
        num_patches = (vision.image_size // vision.patch_size) ** 2
        self.image_size = vision.image_size
        if self.is_llava:
            if vision.model_type not in _LLAVA_VISION_HAS_CLS:
                raise ValueError(
                    f"PIN on LLaVA supports the vision towers {sorted(_LLAVA_VISION_HAS_CLS)}, got {vision.model_type!r}"
                )
            layers = base.config.vision_feature_layer
            strategy = base.config.vision_feature_select_strategy
            # Tokens the vision tower emits; "default" drops the first one (CLS) before the projector.
            self.num_positions = num_patches + (1 if _LLAVA_VISION_HAS_CLS[vision.model_type] else 0)
            if strategy == "default":
                self.num_positions -= 1
            self.hidden_size = vision.hidden_size * (len(layers) if isinstance(layers, (list, tuple)) else 1)
            self.module = base.model.multi_modal_projector
            # The projector's input is exactly what the LLM-side placeholders are filled from, one token each.
            self.num_image_tokens = self.num_positions
        else:
            if not base.config.use_decoder_only_language_model:
                raise ValueError(
                    "PIN supports BLIP-2/VPGTrans models with a decoder-only LLM (OPT, LLaMA); this one has an "
                    f"encoder-decoder LLM ({base.config.text_config.model_type})"
                )
            # BLIP-2's ViT output: CLS + patches, all of which the Q-Former cross-attends to.
            self.num_positions = num_patches + 1
            self.hidden_size = vision.hidden_size
            self.module = base.vision_model
            self.num_image_tokens = base.config.num_query_tokens
        self.image_token_id = base.config.image_token_id


class _FrozenLayerCheckpoint:
    """The `forward` of one layer of PIN's frozen base while gradient checkpointing is on.

    transformers checkpoints a layer only in training mode, but PIN keeps its base in eval mode (no dropout), so that
    never fires; this checkpoints the layer whenever a gradient flows through it (downstream of the insert), with the
    layer itself still in eval mode. As in transformers, the KV cache is not used under checkpointing.
    """

    def __init__(self, forward, checkpoint_func):
        self.forward = forward  # the layer's own bound forward
        self.checkpoint_func = checkpoint_func

    def __call__(self, *args, **kwargs):
        def needs_grad(values):
            return any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)

        if not torch.is_grad_enabled() or not (needs_grad(args) or needs_grad(kwargs.values())):
            return self.forward(*args, **kwargs)
        kwargs = {k: None if k in ("cache", "past_key_values", "layer_past") else v for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        if needs_grad(kwargs.values()):
            # A reentrant checkpoint only routes gradients through positional tensors; one passed by keyword would lose
            # its gradient, so such calls are checkpointed without reentrance.
            return torch.utils.checkpoint.checkpoint(self.forward, *args, use_reentrant=False, **kwargs)
        return self.checkpoint_func(functools.partial(self.forward, **kwargs), *args)


class PinPreTrainedModel(PreTrainedModel):
    config_class = PinConfig
    base_model_prefix = "pin"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        # Only PIN's own modules reach here: the wrapped base is a PreTrainedModel and is dispatched to its own
        # (already-initialised, hence skipped) `_init_weights` by `post_init`.
        if isinstance(module, nn.Linear):
            PinInsert.default_linear_init_(module, init)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class PinForLocalization(PinPreTrainedModel, GenerationMixin):
    """A frozen base VLM plus the Positional Insert π = ψ(S) (PIN, CVPR 2024).

    Only ψ (`pin.psi.*`, ≈1.2M parameters) is trainable; the base (`vlm`) is frozen and always runs in eval mode.
    `forward` and `generate` take the base's inputs plus `use_pin` (False: the paper's "deactivated" mode, exactly
    the base model). Build one with `PinForLocalization.from_base(base_model)` or load one with
    `from_pretrained` / `AutoModel.from_pretrained(..., trust_remote_code=True)`.
    """

    def __init__(self, config: PinConfig, base_model: PreTrainedModel | None = None):
        if base_model is None:
            raise ValueError(
                "PinForLocalization wraps a base VLM: build it with PinForLocalization.from_base(base_model) or load "
                "it with PinForLocalization.from_pretrained(path) (which loads config.base_model_name_or_path)."
            )
        if type(base_model).__name__ != config.base_architecture:
            raise ValueError(
                f"config.base_architecture is {config.base_architecture!r} but the base model is a "
                f"{type(base_model).__name__}"
            )
        point = _InsertionPoint(base_model)
        if (point.num_positions, point.hidden_size) != (config.num_positions, config.vision_hidden_size):
            raise ValueError(
                f"PinConfig expects vision tokens of shape ({config.num_positions}, {config.vision_hidden_size}) but "
                f"the base's fusion network consumes ({point.num_positions}, {point.hidden_size})"
            )
        super().__init__(config)
        self.pin = PinInsert(
            num_positions=config.num_positions,
            output_dim=config.vision_hidden_size,
            sinusoid_dim=config.sinusoid_dim,
            hidden_dims=tuple(config.hidden_dims),
            layer_norm_eps=config.layer_norm_eps,
        )
        self.vlm = base_model
        self.vlm.requires_grad_(False)
        self._insertion = point
        # ψ has no attention: the wrapper reports the base's implementation (see `set_attn_implementation`).
        self.config._attn_implementation_internal = base_model.config._attn_implementation
        self.post_init()
        # A copy: Trainer aligns the wrapper's generation config with the tokenizer, which must not reach the base.
        self.generation_config = copy.deepcopy(base_model.generation_config)
        self.pin.to(next(base_model.parameters()).device)
        self.train(False)

    # ------------------------------------------------------------------ construction / loading / saving

    @classmethod
    def from_base(
        cls,
        base_model: PreTrainedModel,
        base_model_name_or_path: str | None = None,
        grid_size: int | None = None,
        image_size: int | None = None,
        sinusoid_dim: int = 64,
        hidden_dims: tuple[int, ...] = (512, 768),
        layer_norm_eps: float = 1e-5,
    ) -> "PinForLocalization":
        """Wrap an in-memory base VLM with a freshly initialised PIN.

        Args:
            base_model: a `Blip2ForConditionalGeneration`, `VPGTransModel` or `LlavaForConditionalGeneration`.
            base_model_name_or_path: where `from_pretrained` will reload the base from; defaults to the path the
                base was loaded from (`base_model.config._name_or_path`).
            grid_size / image_size: the box grid (defaults: `PinConfig`'s grid over the base's input image size).
        """
        if not isinstance(base_model, PreTrainedModel):
            raise TypeError(f"from_base expects a transformers PreTrainedModel, got {type(base_model).__name__}")
        point = _InsertionPoint(base_model)
        config = PinConfig(
            base_model_name_or_path=base_model_name_or_path or base_model.config._name_or_path or None,
            base_architecture=type(base_model).__name__,
            base_model_type=base_model.config.model_type,
            num_positions=point.num_positions,
            vision_hidden_size=point.hidden_size,
            sinusoid_dim=sinusoid_dim,
            hidden_dims=list(hidden_dims),
            layer_norm_eps=layer_norm_eps,
            image_size=image_size or point.image_size,
            **({} if grid_size is None else {"grid_size": grid_size}),
        )
        return cls(config, base_model=base_model)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        config: PinConfig | None = None,
        base_model: PreTrainedModel | None = None,
        revision: str | None = None,
        subfolder: str = "",
        **kwargs,
    ) -> "PinForLocalization":
        """Load a saved PIN: its config, then the base (`base_model`, else from the saved folder's `base/` when it
        was saved with `include_base=True`, else from `config.base_model_name_or_path`), then ψ's weights.

        `dtype` applies to the base and to ψ ("auto", the default: each in the dtype it was saved in); `device_map`,
        `attn_implementation` apply to the base; hub options (`cache_dir`, `token`, `local_files_only`, ...) to both;
        `revision`/`subfolder` to the PIN folder only. `output_loading_info=True` returns `(model, info)` as
        transformers does, with the base's missing/unexpected/mismatched keys under their `vlm.` names.
        """
        if model_args:
            raise TypeError(f"PinForLocalization.from_pretrained takes no extra positional arguments, got {model_args}")
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        base_kwargs = {k: kwargs.pop(k) for k in _BASE_LOAD_KWARGS if k in kwargs}
        output_loading_info = kwargs.pop("output_loading_info", False)
        # Passed by the Auto classes; they concern the PIN folder's code, which is already resolved here.
        for key in ("trust_remote_code", "adapter_kwargs", "code_revision", "_from_auto", "_commit_hash"):
            kwargs.pop(key, None)
        if kwargs:
            logger.warning(f"PinForLocalization.from_pretrained ignores the options {sorted(kwargs)}")
        path = str(pretrained_model_name_or_path)
        if config is None:
            config_dict, _ = PinConfig.get_config_dict(path, revision=revision, subfolder=subfolder, **hub_kwargs)
            if config_dict.get("model_type") != PinConfig.model_type:
                raise ValueError(
                    f"{path} does not hold a PIN (its config.json has model_type={config_dict.get('model_type')!r}, "
                    f"expected 'pin'): load it with the class of that model type, or AutoModel"
                )
            config = PinConfig.from_dict(config_dict)
        if not isinstance(config, PinConfig) and getattr(config, "model_type", None) != "pin":
            raise ValueError(f"{path} does not hold a PIN config (model_type={getattr(config, 'model_type', None)!r})")
        base_info = None
        if base_model is None:
            base_cls = _base_class(config.base_architecture)
            if config.base_subfolder:
                sub = f"{subfolder}/{config.base_subfolder}" if subfolder else config.base_subfolder
                base_model, base_info = base_cls.from_pretrained(
                    path, subfolder=sub, revision=revision, output_loading_info=True, **hub_kwargs, **base_kwargs
                )
            elif config.base_model_name_or_path:
                reference = config.base_model_name_or_path
                if not os.path.isdir(reference) and not _HUB_ID.match(reference):
                    raise ValueError(
                        f"The PIN in {path} references its base at the local path {reference!r}, which is not a "
                        "folder on this machine: pass base_model=<the loaded base VLM>, or re-save the PIN where "
                        "its base exists with save_pretrained(..., include_base=True) (or with "
                        "config.base_model_name_or_path set to the base's Hub id)"
                    )
                base_model, base_info = base_cls.from_pretrained(
                    config.base_model_name_or_path, output_loading_info=True, **hub_kwargs, **base_kwargs
                )
            else:
                raise ValueError(
                    f"{path} names no base model (config.base_model_name_or_path is empty): pass base_model=..."
                )
        if config.base_model_type and base_model.config.model_type != config.base_model_type:
            raise ValueError(
                f"The PIN in {path} was trained on a {config.base_model_type!r} base, got a "
                f"{base_model.config.model_type!r} model"
            )
        model = cls(config, base_model=base_model)
        weights_file = cached_file(path, _PIN_WEIGHTS_NAME, revision=revision, subfolder=subfolder, **hub_kwargs)
        pin_state = load_state_dict(weights_file)
        model.load_pin_state_dict(pin_state)
        model.pin.to(_insert_dtype(base_kwargs.get("dtype", base_kwargs.get("torch_dtype")), pin_state))
        if not output_loading_info:
            return model
        # ψ is loaded strictly (a missing or extra ψ key raises), so only the base can report anything.
        return model, _prefixed_loading_info(base_info, "vlm.")

    def load_pin_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load ψ's weights from `pin.psi.*` keys (strict: every ψ key, nothing else)."""
        prefix = "pin."
        unexpected = sorted(k for k in state_dict if not k.startswith(prefix))
        if unexpected:
            raise ValueError(f"PIN weights contain non-PIN keys: {unexpected[:5]}")
        self.pin.load_state_dict({k[len(prefix) :]: v for k, v in state_dict.items()}, strict=True)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        include_base: bool | None = None,
        state_dict: dict | None = None,
        **kwargs,
    ):
        """Save adapter-style: `config.json` (base reference + `auto_map`), the code files, and ψ's weights
        (`model.safetensors` with `pin.psi.*` only).

        Args:
            include_base: also save the base model into `save_directory/base/`, so the folder is self-contained
                (`from_pretrained` then loads the base from there instead of `base_model_name_or_path`). `None`
                (the default) includes it exactly when the reference would not load on another machine: when
                `config.base_model_name_or_path` is a local folder or path, or empty, or the PIN was loaded from a
                folder that included its base. A base loaded by Hub id is referenced by that id. `False` keeps a
                local path as the reference (loadable only where that path exists).
            state_dict: as in `PreTrainedModel.save_pretrained` (e.g. from `Trainer`); only its `pin.` keys are kept.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        pin_state = {k: v for k, v in state_dict.items() if k.startswith("pin.")}
        self.config.auto_map = {
            "AutoConfig": "configuration_pin.PinConfig",
            "AutoModel": "modeling_pin.PinForLocalization",
            "AutoModelForImageTextToText": "modeling_pin.PinForLocalization",
        }
        previous_subfolder = self.config.base_subfolder
        if include_base is None:
            include_base = bool(previous_subfolder) or _is_local_reference(self.config.base_model_name_or_path)
            if include_base:
                logger.info(
                    f"Saving the base VLM into {os.path.join(save_directory, _BASE_SUBFOLDER)} (its reference "
                    f"{self.config.base_model_name_or_path!r} is no Hub id), so the folder loads on any machine; "
                    "pass include_base=False to keep the local reference"
                )
        if not include_base and not self.config.base_model_name_or_path and not previous_subfolder:
            logger.warning(
                "Saving PIN without a base reference (config.base_model_name_or_path is empty): loading it will need "
                "base_model=...; pass include_base=True or set base_model_name_or_path to make it loadable alone."
            )
        if include_base:
            self.vlm.save_pretrained(os.path.join(save_directory, _BASE_SUBFOLDER), **kwargs)
            self.config.base_subfolder = _BASE_SUBFOLDER
        try:
            super().save_pretrained(save_directory, state_dict=pin_state, **kwargs)
        finally:
            self.config.base_subfolder = previous_subfolder

    # ------------------------------------------------------------------ the insert

    def train(self, mode: bool = True):
        """Train/eval mode for ψ only: the frozen base always runs in eval mode (no dropout), as at inference."""
        super().train(mode)
        self.vlm.eval()
        return self

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        """transformers' per-layer flags, plus `_FrozenLayerCheckpoint` on the flagged layers of the base: they run in
        eval mode, where transformers' own checkpointing stays off."""
        if gradient_checkpointing_func is None:
            gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)
        super()._set_gradient_checkpointing(
            enable=enable, gradient_checkpointing_func=gradient_checkpointing_func, **kwargs
        )
        for module in self.vlm.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.__dict__.pop("forward", None)
                if enable and module.gradient_checkpointing:
                    module.forward = _FrozenLayerCheckpoint(
                        type(module).forward.__get__(module), gradient_checkpointing_func
                    )

    def set_attn_implementation(self, attn_implementation: str | dict, *args, **kwargs):
        """Set the base's attention implementation (a string, or a dict keyed by the base's sub-configs, as for the
        base itself); ψ has no attention, so the wrapper only mirrors what the base ends up with."""
        self.vlm.set_attn_implementation(attn_implementation, *args, **kwargs)
        self.config._attn_implementation_internal = self.vlm.config._attn_implementation

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    def positional_insert(self) -> torch.Tensor:
        """π = ψ(S) of shape `(num_positions, vision_hidden_size)` (cached when no gradient is needed)."""
        return self.pin()

    def _add_insert(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """x_v* = x_v + π, broadcast over the batch. `vision_tokens`: `(B, N, D)`."""
        expected = (self.config.num_positions, self.config.vision_hidden_size)
        if vision_tokens.dim() != 3 or tuple(vision_tokens.shape[1:]) != expected:
            raise ValueError(
                f"PIN expects vision tokens of shape (batch, {expected[0]}, {expected[1]}) at the fusion input, got "
                f"{tuple(vision_tokens.shape)} (was the image resized to another resolution?)"
            )
        pi = self.pin().to(device=vision_tokens.device, dtype=vision_tokens.dtype)
        return vision_tokens + pi

    @contextmanager
    def _insert_active(self, use_pin: bool):
        """Registers the hook that adds π for the duration of one base call (nothing when `use_pin` is False)."""
        if not use_pin:
            yield
            return
        if self._insertion.is_llava:

            def hook(module, args, kwargs):
                if args:
                    return (self._add_insert(args[0]), *args[1:]), kwargs
                kwargs = dict(kwargs)
                name = next(iter(kwargs))
                kwargs[name] = self._add_insert(kwargs[name])
                return args, kwargs

            handle = self._insertion.module.register_forward_pre_hook(hook, with_kwargs=True)
        else:

            def hook(module, args, output):
                if isinstance(output, tuple):
                    return (self._add_insert(output[0]), *output[1:])
                output.last_hidden_state = self._add_insert(output.last_hidden_state)
                return output

            handle = self._insertion.module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    # ------------------------------------------------------------------ inputs

    def _check_inputs(
        self, pixel_values, input_ids, require_input_ids: bool, vision_embeds=None, images_cached: bool = False
    ) -> int:
        """Clear errors for inputs the base would otherwise reject deep inside its forward/generate.
        `images_cached`: the images are already in a given KV cache, so no pixel_values are needed.

        Returns the batch size.
        """
        if images_cached and pixel_values is None and vision_embeds is None and input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must be (batch, seq_len), got {tuple(input_ids.shape)}")
            return input_ids.shape[0]
        if vision_embeds is not None:
            if pixel_values is not None:
                raise ValueError("give either pixel_values or precomputed vision_embeds, not both")
            if self._insertion.is_llava:
                raise ValueError(
                    "precomputed vision_embeds are supported for BLIP-2/VPGTrans bases only; pass pixel_values to a "
                    "LLaVA-based PIN"
                )
            expected = (self.config.num_positions, self.config.vision_hidden_size)
            if (
                not isinstance(vision_embeds, torch.Tensor)
                or vision_embeds.dim() != 3
                or tuple(vision_embeds.shape[1:]) != expected
            ):
                shape = tuple(vision_embeds.shape) if isinstance(vision_embeds, torch.Tensor) else type(vision_embeds)
                raise ValueError(
                    f"vision_embeds must be (batch, {expected[0]}, {expected[1]}) vision-encoder outputs (from "
                    f"encode_images), got {shape}"
                )
            batch = vision_embeds.shape[0]
        else:
            if pixel_values is None:
                raise ValueError("PinForLocalization needs pixel_values (PIN localises objects in an image)")
            if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
                shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
                raise ValueError(f"pixel_values must be a (batch, 3, height, width) tensor of RGB images, got {shape}")
            size = self._insertion.image_size
            if tuple(pixel_values.shape[2:]) != (size, size):
                raise ValueError(
                    f"pixel_values must be {size}x{size} (the base's vision input size), got "
                    f"{tuple(pixel_values.shape[2:])}; preprocess images with the PinProcessor"
                )
            batch = pixel_values.shape[0]
        if input_ids is None:
            if require_input_ids:
                raise ValueError("input_ids are required: build them with the PinProcessor")
            return batch
        if input_ids.dim() != 2 or input_ids.shape[0] != batch:
            raise ValueError(
                f"input_ids must be (batch, seq_len) with one row per image: got {tuple(input_ids.shape)} for "
                f"{batch} images"
            )
        counts = (input_ids == self._insertion.image_token_id).sum(dim=1)
        expected = self._insertion.num_image_tokens
        if bool((counts != expected).any()):
            raise ValueError(
                f"each row of input_ids must hold exactly {expected} image tokens (id {self._insertion.image_token_id}), "
                f"got {counts.tolist()}; build the inputs with the PinProcessor of this model"
            )
        return batch

    # ------------------------------------------------------------------ precomputed vision-encoder outputs

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The frozen vision encoder's output x_v, before π: what `forward(vision_embeds=...)` takes.

        The vision encoder is frozen and π is added after it, so x_v of an image never changes while PIN trains:
        a training loop can compute it once per image and reuse it (then a step costs the fusion network and the
        LLM only). BLIP-2/VPGTrans bases only.

        Args:
            pixel_values: `(B, 3, S, S)` images from the PinProcessor.

        Returns:
            `(B, num_positions, vision_hidden_size)`, i.e. `vision_model(pixel_values).last_hidden_state`.
        """
        if self._insertion.is_llava:
            raise ValueError("encode_images supports BLIP-2/VPGTrans bases only (LLaVA's projector input is layered)")
        self._check_inputs(pixel_values, None, require_input_ids=False)
        return self.vlm.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state

    @contextmanager
    def _precomputed_vision(self, vision_embeds: torch.Tensor | None):
        """For one base call, `vlm.vision_model` returns `vision_embeds` instead of running the ViT.

        Only the instance's `forward` is replaced, so `nn.Module.__call__` still runs the hooks registered on
        `vision_model` (among them the one adding π). The pooled output is computed as the ViT computes it (its
        `post_layernorm` applied to the CLS row, a second time), although BLIP-2 only reads `last_hidden_state`.
        """
        if vision_embeds is None:
            yield
            return
        vision = self.vlm.vision_model

        def forward(*args, **kwargs):
            return BaseModelOutputWithPooling(
                last_hidden_state=vision_embeds, pooler_output=vision.post_layernorm(vision_embeds[:, 0, :])
            )

        vision.forward = forward
        try:
            yield
        finally:
            del vision.forward

    @staticmethod
    def _placeholder_pixels(vision_embeds: torch.Tensor) -> torch.Tensor:
        """A `(B, 3, 1, 1)` stand-in for pixel_values: the base reads only its batch size, device and dtype."""
        return vision_embeds.new_zeros(vision_embeds.shape[0], 3, 1, 1)

    # ------------------------------------------------------------------ forward / generate

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_pin: bool = True,
        vision_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ):
        """The base model's forward with π added to its vision tokens.

        Args:
            pixel_values: `(B, 3, S, S)` images from the PinProcessor.
            input_ids / attention_mask: `(B, L)` prompt (+ target) tokens incl. the base's image placeholders.
            labels: `(B, L)` next-token targets, -100 outside the supervised span; the base computes the loss.
            use_pin: False runs the base model exactly as it is (PIN deactivated).
            vision_embeds: instead of pixel_values, the frozen vision encoder's outputs `(B, N, D)` from
                `encode_images` (BLIP-2/VPGTrans): the ViT is skipped, everything after it runs as usual.
            **kwargs: passed to the base (e.g. `num_items_in_batch` from `Trainer`).

        Returns:
            The base model's output (`loss` when `labels` are given, `logits` of shape `(B, L, vocab)`).
        """
        self._check_inputs(pixel_values, input_ids, require_input_ids=True, vision_embeds=vision_embeds)
        if vision_embeds is not None:
            pixel_values = self._placeholder_pixels(vision_embeds)
        with self._precomputed_vision(vision_embeds), self._insert_active(use_pin):
            return self.vlm(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        use_pin: bool = True,
        vision_embeds: torch.FloatTensor | None = None,
        defer_stop_check: bool = True,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """The base model's `generate` with π added to its vision tokens (`use_pin=False`: the base alone).
        On the current CUDA device the stop check after each token is read one step late (`defer_stop_check`, see
        `deferred_stop.py`): same tokens, no per-token host sync.

        `vision_embeds` (from `encode_images`) may replace `pixel_values`, as in `forward`. To continue from a
        returned KV cache, pass the ids generated so far with the cache; a LLaVA base then takes no images (they are
        in the cache, as for LLaVA's own `generate`), a BLIP-2/VPGTrans base takes the same images again.
        Returns the base's generated ids (decode and parse them with `PinProcessor.post_process_localization`).
        """
        cache = generate_kwargs.get("cache", generate_kwargs.get("past_key_values"))
        images_cached = self._insertion.is_llava and cache is not None and cache.get_seq_length() > 0
        self._check_inputs(
            pixel_values,
            input_ids,
            require_input_ids=self._insertion.is_llava,
            vision_embeds=vision_embeds,
            images_cached=images_cached,
        )
        if vision_embeds is not None:
            pixel_values = self._placeholder_pixels(vision_embeds)
        if pixel_values is not None:  # an explicit None would still send LLaVA's generate to its vision tower
            generate_kwargs["pixel_values"] = pixel_values
        if isinstance(self.vlm, VPGTransModel):
            generate_kwargs["defer_stop_check"] = defer_stop_check  # its own generate would turn it on otherwise
        with (
            self._precomputed_vision(vision_embeds),
            self._insert_active(use_pin),
            deferred_stop_check(defer_stop_check, generate_kwargs),
        ):
            return self.vlm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)


PinConfig.register_for_auto_class()
PinForLocalization.register_for_auto_class("AutoModel")
