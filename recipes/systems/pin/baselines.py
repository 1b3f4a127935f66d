"""The baselines of PIN's Table 1, on the same frozen base VLM and the same synthetic data as PIN.

| method       | what trains (the base stays frozen)                                   | feature cache |
|--------------|-----------------------------------------------------------------------|---------------|
| `pin`        | ψ of the Positional Insert (`PinForLocalization.pin`)                 | yes           |
| `coop`       | CoOp (Zhou et al.): 16 context vectors at the LLM input               | yes           |
| `vpt_f`      | VPT (Jia et al.): 100 tokens appended to the fusion network's input   | yes           |
| `vpt_phi`    | VPT-shallow: 100 tokens prepended to the vision encoder's layers      | no            |
| `lora_phi`   | LoRA (r=16, α=16) on the vision encoder's attention, via peft         | no            |
| `raw`        | nothing: the base VLM prompted with PIN's prompt                      | -             |
| `random`     | nothing: a box drawn from the training boxes                          | -             |
| `full_image` | nothing: the whole image as the box                                   | -             |

VPT-φ and LoRA-φ change what the vision encoder computes, so its outputs cannot be cached: they train at the
cost of the whole VLM (the paper's point that PIN is cheaper to train). The PEFT baselines run through
`PinForLocalization` with the insert switched off (`use_pin=False`), so they share its input checks and its
precomputed-vision path; their own parameters live on `PeftBaseline` and act through forward hooks on the base.
BLIP-2-family bases (BLIP-2, VPGTrans) only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from groundvlm.modeling import PinForLocalization

METHODS = ("pin", "coop", "vpt_f", "vpt_phi", "lora_phi", "random", "full_image", "raw")
TRAINED_METHODS = ("pin", "coop", "vpt_f", "vpt_phi", "lora_phi")
PEFT_BASELINES = ("coop", "vpt_f", "vpt_phi", "lora_phi")
CACHEABLE_METHODS = ("pin", "coop", "vpt_f", "raw")
"""Methods whose vision-encoder outputs do not change in training, so `encode_images` can be cached."""

TABLE_NAMES = {
    "raw": "raw",
    "random": "random",
    "full_image": "full-image box",
    "coop": "CoOp on LLM",
    "vpt_f": "VPT on F",
    "vpt_phi": "VPT on ϕ_V",
    "lora_phi": "LoRA on ϕ_V",
    "pin": "PIN (ours)",
}

# Attention projections of the vision encoders PIN supports (BLIP-2/EVA: qkv + projection; CLIP: q/k/v/out).
_LORA_DEFAULT_TARGETS = r".*encoder\.layers\.\d+\.self_attn\.(qkv|projection|q_proj|k_proj|v_proj|out_proj)"


def check_method(method: str) -> str:
    """`method` if it is one of `METHODS`, else a ValueError listing them."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


class PeftBaseline(nn.Module):
    """A frozen base VLM (inside a `PinForLocalization` whose insert is off) plus one PEFT baseline.

    Args:
        localizer: `PinForLocalization` around a BLIP-2-family base; its ψ is frozen here and never used.
        method: "coop", "vpt_f", "vpt_phi" or "lora_phi".
        num_tokens: learnable tokens (CoOp: 16, VPT: 100 in the paper).
        coop_slot_id: token id of the slots whose input embeddings CoOp's context vectors replace (the CoOp
            processor puts `num_tokens` of them before the prompt, see `coop_text_prefix`).
        lora_r / lora_alpha / lora_target_modules: LoRA settings (peft; targets default to the vision encoder's
            attention projections).

    Trainable parameters: `prompt` `(num_tokens, width)` for CoOp/VPT (width: the LLM's input-embedding width
    for CoOp, the vision encoder's for VPT), or the `lora_A`/`lora_B` matrices inside `localizer.vlm.vision_model`.
    """

    def __init__(
        self,
        localizer: PinForLocalization,
        method: str,
        num_tokens: int = 16,
        coop_slot_id: int | None = None,
        lora_r: int = 16,
        lora_alpha: int = 16,
        lora_target_modules: str | list[str] | None = None,
    ):
        super().__init__()
        if method not in PEFT_BASELINES:
            raise ValueError(f"PeftBaseline method must be one of {PEFT_BASELINES}, got {method!r}")
        if localizer._insertion.is_llava:
            raise ValueError("the PEFT baselines support BLIP-2-family bases (BLIP-2, VPGTrans), not LLaVA")
        if method in ("coop", "vpt_f", "vpt_phi") and num_tokens < 1:
            raise ValueError(f"{method} needs num_tokens >= 1, got {num_tokens}")
        self.method = method
        self.localizer = localizer
        self.localizer.pin.requires_grad_(False)
        self.config = localizer.config
        vlm = localizer.vlm
        self._handles = []
        if method == "coop":
            if coop_slot_id is None:
                raise ValueError("CoOp needs coop_slot_id, the token whose embeddings its context vectors replace")
            self.coop_slot_id = int(coop_slot_id)
            width = vlm.get_input_embeddings().embedding_dim
            self.prompt = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
            self._handles.append(vlm.get_input_embeddings().register_forward_hook(self._coop_hook))
        elif method in ("vpt_f", "vpt_phi"):
            self.prompt = nn.Parameter(torch.randn(num_tokens, localizer.config.vision_hidden_size) * 0.02)
            if method == "vpt_f":
                self._handles.append(vlm.vision_model.register_forward_hook(self._vpt_f_hook))
            else:
                self._handles.append(vlm.vision_model.embeddings.register_forward_hook(self._vpt_phi_insert_hook))
                self._handles.append(vlm.vision_model.register_forward_hook(self._vpt_phi_drop_hook))
        else:
            from peft import LoraConfig, inject_adapter_in_model

            targets = lora_target_modules or _LORA_DEFAULT_TARGETS
            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=targets)
            inject_adapter_in_model(config, vlm.vision_model)
            lora = [n for n, _ in vlm.vision_model.named_parameters() if "lora_" in n]
            if not lora:
                raise ValueError(f"LoRA target_modules {targets!r} matched no layer of the vision encoder")
            for name, param in vlm.vision_model.named_parameters():
                param.requires_grad_("lora_" in name)
        self.num_tokens = num_tokens
        self.to(next(vlm.parameters()).device)

    # -------------------------------------------------------------- hooks (shapes: B batch, N vision tokens)

    def _coop_hook(self, module, args, output):
        """Input embeddings `(B, L, H)`: the `num_tokens` slot positions of each row get the context vectors.

        Only a call where every row holds exactly `num_tokens` slots is the prompt; decoding steps embed one new
        token per row and are left alone.
        """
        slots = args[0] == self.coop_slot_id
        if not bool((slots.sum(dim=1) == self.prompt.shape[0]).all()):
            return output
        context = self.prompt.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return output.masked_scatter(slots.unsqueeze(-1), context)

    def _vpt_f_hook(self, module, args, output):
        """The fusion network's input `(B, N, D)` -> `(B, N + num_tokens, D)` (the Q-Former attends to all)."""
        x = output.last_hidden_state
        prompt = self.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        output.last_hidden_state = torch.cat([x, prompt], dim=1)
        return output

    def _vpt_phi_insert_hook(self, module, args, output):
        """Patch embeddings `(B, N, D)` -> `[CLS, prompts, patches]` `(B, N + num_tokens, D)`, as VPT-shallow."""
        prompt = self.prompt.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :1], prompt, output[:, 1:]], dim=1)

    def _vpt_phi_drop_hook(self, module, args, output):
        """The prompts' outputs are dropped again, so the fusion network gets the `(B, N, D)` tokens it expects."""
        x = output.last_hidden_state
        n = self.prompt.shape[0]
        output.last_hidden_state = torch.cat([x[:, :1], x[:, 1 + n :]], dim=1)
        return output

    # -------------------------------------------------------------- the base's interface

    @property
    def supports_feature_cache(self) -> bool:
        return self.method in CACHEABLE_METHODS

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.supports_feature_cache:
            raise ValueError(
                f"{self.method} changes the vision encoder, so its outputs cannot be cached; train with "
                "use_feature_cache=False"
            )
        return self.localizer.encode_images(pixel_values)

    def train(self, mode: bool = True):
        super().train(mode)
        self.localizer.train(mode)  # keeps the base in eval mode
        return self

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None, vision_embeds=None, **kw):
        """As `PinForLocalization.forward` with the insert off; the baseline's hooks do the adaptation."""
        if vision_embeds is not None and not self.supports_feature_cache:
            self.encode_images(None)  # raises the explanation
        return self.localizer(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            use_pin=False,
            vision_embeds=vision_embeds,
            **kw,
        )

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, vision_embeds=None, **kw):
        if vision_embeds is not None and not self.supports_feature_cache:
            self.encode_images(None)
        return self.localizer.generate(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_pin=False,
            vision_embeds=vision_embeds,
            **kw,
        )


def coop_text_prefix(slot_token: str, num_tokens: int) -> str:
    """The text CoOp's processor puts before PIN's prompt: `num_tokens` slot tokens (one token each)."""
    return slot_token * num_tokens


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters an optimizer would update (requires_grad)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def random_training_boxes(train_boxes: list[list[float]], count: int, seed: int) -> list[list[float]]:
    """The "random" baseline: `count` boxes drawn uniformly (with replacement) from the training boxes."""
    if not train_boxes:
        raise ValueError("the random baseline needs at least one training box")
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(train_boxes), size=count)
    return [list(map(float, train_boxes[i])) for i in picks]


def full_image_box(height: float, width: float) -> list[float]:
    """The "full image" baseline's box `[0, 0, width, height]` (toy objects are large; the box to beat)."""
    return [0.0, 0.0, float(width), float(height)]
