"""PIN experiments that change the insert's form (not the reference; not recipe options): run `recipes/pin.py` with
π replaced by a variant, to test why PIN ties the full-image box on the toy base (benchmarks/RESULTS.md).

    python benchmarks/pin_insert_variants.py zero_mean --output_dir runs/pin/zero_mean      # π minus its mean over positions
    python benchmarks/pin_insert_variants.py clip:20.4 --output_dir runs/pin/clip          # π rows clipped to norm <= 20.4

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
        raise ValueError(f"unknown variant {variant!r}: zero_mean or clip:<max row norm>")
    return forward


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    from groundvlm.modeling import pin_insert
    from groundvlm.recipes import pin

    pin_insert.PinInsert.forward = variant_forward(argv[0], pin_insert.PinInsert.forward)
    pin.main(argv[1:])


if __name__ == "__main__":
    main()
