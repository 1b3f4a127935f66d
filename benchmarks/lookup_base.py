"""A PIN base whose LM has been taught the in-context lookup: take the LM out of a BLIP-2-style VLM, teach it
(`benchmarks/lm_lookup_probe.py --curriculum ... --corpus-mix ... --save`), put it back, and gate the result as the
caption base is gated (`recipes/systems/vpgtrans/captioner.py`: name recall, box mode behind the image, no raw
localisation).

    python benchmarks/lookup_base.py extract --vlm recipes/toy_checkpoints/vlm-caption --out runs/lookup/lm
    python benchmarks/lm_lookup_probe.py --lm runs/lookup/lm --curriculum ... --save runs/lookup/lm-taught
    python benchmarks/lookup_base.py swap --vlm recipes/toy_checkpoints/vlm-caption --lm runs/lookup/lm-taught \\
        --out runs/lookup/vlm-caption-lookup      # writes <out>/gates.json next to the model

Only the LM's weights change: vision encoder, Q-Former, projector and processor are the VLM's own.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def extract(vlm: str, out: Path, processor: str | None = None) -> None:
    """Save the VLM's language model and tokenizer (from `processor`'s folder when given) as a causal-LM folder."""
    from groundvlm.recipes.systems.pin.models import load_base

    model, processor = load_base(vlm, torch.device("cpu"), processor)
    model.language_model.save_pretrained(out)
    processor.tokenizer.save_pretrained(out)


def swap(vlm: str, lm: str, out: Path, eval_images: int, processor: str | None = None) -> dict:
    """The VLM with `lm`'s weights in place of its LM (same architecture and vocabulary required), saved to `out`,
    with its base checks and gates in `out/gates.json`."""
    from groundvlm.recipes.systems.pin.models import load_base
    from groundvlm.recipes.systems.vpgtrans.captioner import judge_base

    model, processor = load_base(vlm, torch.device("cpu"), processor)
    taught = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32)
    if type(taught) is not type(model.language_model):
        raise ValueError(
            f"{lm} holds a {type(taught).__name__}; the VLM's LM is a {type(model.language_model).__name__}"
        )
    if any(Path(lm, name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        vocab = AutoTokenizer.from_pretrained(lm).get_vocab()
        if vocab != processor.tokenizer.get_vocab():
            raise ValueError(
                f"{lm}'s tokenizer has another vocabulary than {vlm}'s: its token ids would mean other words"
            )
    # strict: the same parameter names and shapes (a resized vocabulary or another size fails here)
    model.language_model.load_state_dict(taught.state_dict(), strict=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    start = time.time()
    judged = judge_base(model.eval(), processor, eval_images)
    report = {
        "vlm": vlm,
        "lm": lm,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "check_seconds": round(time.time() - start, 1),
        **judged,
    }
    (out / "gates.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="save the VLM's LM and tokenizer")
    ex.add_argument("--vlm", required=True)
    ex.add_argument("--out", type=Path, required=True)
    sw = sub.add_parser("swap", help="the VLM with another LM's weights, gated")
    sw.add_argument("--vlm", required=True)
    sw.add_argument("--lm", required=True)
    sw.add_argument("--out", type=Path, required=True)
    sw.add_argument("--eval-images", type=int, default=100)
    for command in (ex, sw):  # a Trainer checkpoint holds the model only: take the processor from the base it grew from
        command.add_argument("--processor", help="folder of the VLM's processor (default: --vlm)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.command == "extract":
        extract(args.vlm, args.out, args.processor)
    else:
        report = swap(args.vlm, args.lm, args.out, args.eval_images, args.processor)
        print(json.dumps(report["gates"], indent=1))


if __name__ == "__main__":
    main()
