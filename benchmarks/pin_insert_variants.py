"""PIN experiments that change the insert's form (not the reference; not recipe options): run `recipes/pin.py` with
π replaced by a variant, to test why PIN ties the full-image box on the toy base (benchmarks/RESULTS.md).

    python benchmarks/pin_insert_variants.py zero_mean --output_dir runs/pin/zero_mean      # π minus its mean over positions
    python benchmarks/pin_insert_variants.py clip:20.4 --output_dir runs/pin/clip          # π rows clipped to norm <= 20.4
    python benchmarks/pin_insert_variants.py values_only --output_dir runs/pin/values      # π reaches only the values
    python benchmarks/pin_insert_variants.py keys_only --output_dir runs/pin/keys          # π reaches only the keys

`values_only` / `keys_only` split PIN's one path in two: x + π enters the fusion module's cross-attention both as
keys (where each query looks) and as values (what it reads); these add π only to the values (W_v(x + π) = W_v x +
W_v π) or only to the keys, so the frozen attention pattern stays content-driven (values_only) or π can only steer it
(keys_only). BLIP-2-style bases (a Q-Former with `crossattention.attention.{key,value}`) only.

Every argument after the variant goes to `recipes/pin.py` unchanged (default: the CPU default run).
"""

from __future__ import annotations

import sys

import torch


def variant_forward(variant: str, original):
    """A `PinInsert.forward` that returns the variant of what `original` returns."""
    if variant == "zero_mean":

        def forward(self) -> torch.Tensor:
            pi = original(self)
            return pi - pi.mean(0, keepdim=True)

    elif variant.startswith("clip:"):
        limit = float(variant.split(":", 1)[1])
        if limit <= 0:
            raise ValueError(f"clip limit must be > 0, got {limit}")

        def forward(self) -> torch.Tensor:
            pi = original(self)
            return pi * (limit / pi.norm(dim=-1, keepdim=True).clamp_min(1e-6)).clamp(max=1.0)

    else:
        raise ValueError(f"unknown variant {variant!r}: zero_mean, clip:<max row norm>, values_only or keys_only")
    return forward


SPLIT_VARIANTS = {"values_only": "value", "keys_only": "key"}


def split_insert_active(projection: str):
    """A `PinForLocalization._insert_active` that adds π only through the cross-attention `projection` ("key" or
    "value") of every fusion layer: a forward hook adds `π @ W.T` (no bias: the token's own pass added it) to the
    projection's output, which equals projecting x + π on that side alone."""
    from contextlib import contextmanager

    import torch.nn.functional as F

    @contextmanager
    def insert_active(self, use_pin: bool):
        if not use_pin:
            yield
            return
        suffix = f"crossattention.attention.{projection}"
        modules = [m for n, m in self.vlm.named_modules() if n.endswith(suffix)]
        if not modules:
            raise ValueError(f"{projection}-only PIN needs a Q-Former base (no module named *.{suffix})")
        expected = (self.config.num_positions, self.config.vision_hidden_size)

        def hook(module, args, output):
            if tuple(args[0].shape[1:]) != expected:  # not the vision tokens (e.g. a text cross-attention)
                return output
            pi = self.pin().to(device=output.device, dtype=output.dtype)
            return output + F.linear(pi, module.weight)

        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    return insert_active


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    from groundvlm.modeling import modeling_pin, pin_insert
    from groundvlm.recipes import pin

    if argv[0] in SPLIT_VARIANTS:
        modeling_pin.PinForLocalization._insert_active = split_insert_active(SPLIT_VARIANTS[argv[0]])
    else:
        pin_insert.PinInsert.forward = variant_forward(argv[0], pin_insert.PinInsert.forward)
    pin.main(argv[1:])


if __name__ == "__main__":
    main()
