"""PIN's cost, as paired ratios of one run: inference latency of PIN vs its base VLM, and training samples/s
of PIN vs LoRA-φ.

Units, each timed once per repeat:

- `infer/base/b{n}` and `infer/pin/b{n}` per batch size n: greedy `generate` of exactly `--new-tokens` tokens
  (`min_new_tokens` forces the length; KV cache) on identical inputs, the base VLM's own `generate` vs
  `PinForLocalization.generate(use_pin=True)` around that same base object. π = ψ(S) does not depend on the input, so
  the inference wrapper computes it once and reuses it (its ψ never trains here): PIN adds one `(B, N, D)` addition to
  the vision tokens, a forward hook and its input checks. A unit's value is the median of `--calls` back-to-back calls.
- `train/pin_cached`, `train/pin_uncached`, `train/lora_phi`: `--train-steps` optimizer steps (forward with the loss on
  the box span, backward, AdamW lr 1e-3 weight decay 0 = the recipe's Adam) on one fixed `--train-batch-size` batch,
  reported as samples/s. PIN trains ψ (a second `PinForLocalization` on the same frozen base, so the inference ψ and
  its cached π stay untouched) with the frozen vision encoder's outputs precomputed once (`encode_images`: the
  recipe's feature cache, so a step costs the fusion network and the LLM) and, to separate the cache's effect from
  the method's, from pixels (the ViT then runs forward only: nothing before π needs a gradient). LoRA-φ (r=16, α=16
  on the ViT's attention via peft, `groundvlm.recipes.systems.pin.baselines.PeftBaseline`) changes what the ViT computes, so it runs
  on pixels and back-propagates through the whole ViT. It lives on its own copy of the base (peft injects into the
  ViT in place), loaded or built the same way.
  Data loading and collation are outside the timed steps for every method (inputs sit on the device).

After `--warmup` untimed rounds (AdamW's state, kernel choice, allocator), each of `--repeats` rounds runs every unit
once, the base order rotated by one per round (the timing helpers of `groma_speed.py`), so drift falls on all units
alike. Ratios are formed within each repeat (PIN/base latency; PIN/LoRA-φ samples/s), then their median is reported
with the min-max; the acceptance line is `pin_over_base_latency_b{n} <= 1.01` (the training ratios have no bar).
On CUDA, `step memory` is the largest rise of allocated memory during a training unit above its level at the start
(activations, gradients, optimizer state; the weights are resident before).

Bases: `--base_model FOLDER` (a BLIP-2/VPGTrans checkpoint + processor; default the committed toy caption VL-LLM
`recipes/toy_checkpoints/vlm-caption`, a VPGTransModel), or `--base blip2-opt-2.7b-shape`: random weights built on
the GPU in bf16 with BLIP-2 OPT-2.7B's shape (EVA ViT-g 1408 x 39 layers at 224 px / patch 14, so N=257 and D=1408
and ψ has 1,512,576 parameters; Q-Former defaults, 32 queries; OPT-2.7B 2560 x 32 layers, ffn 10240, vocab 50272).
No OPT tokenizer is available offline, so that shape gets a toy OPT-style byte-level tokenizer trained on the prompt
text (`</s>` BOS, about one token per word; its ids are valid OPT ids) and PIN's real prompt and box targets.

Usage (repo root):
    python benchmarks/pin_speed.py --device cpu --batch-sizes 1 8 --repeats 7 --out /tmp/pin_speed_cpu
    python benchmarks/pin_speed.py --base blip2-opt-2.7b-shape --device cuda          # paper-scale shape, ~GPU minutes
Writes pin_speed.json and pin_speed.md to $OUT if set, else to `--out` if given. The JSON holds the medians, the
per-repeat ratios (`acceptance`, `training_ratios`), the rotated orders (`rounds`) and every unit's per-repeat
values (`samples`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import Blip2Config, Blip2ForConditionalGeneration, BlipImageProcessor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checkout import ROOT  # noqa: E402  (makes groundvlm importable from a bare checkout)
from groma_speed import (  # noqa: E402
    Clock,
    Unit,
    build_context,
    check,
    git_commit,
    release,
    run_rounds,
    spread,
    write_report,
)

from groundvlm.modeling import PinForLocalization  # noqa: E402
from groundvlm.processing import PinProcessor  # noqa: E402
from groundvlm.processing.processing_pin import pin_prompt  # noqa: E402
from groundvlm.recipes.systems.pin.baselines import PeftBaseline  # noqa: E402
from groundvlm.recipes.systems.pin.models import load_base  # noqa: E402
from groundvlm.recipes.toyworld.tokenizers import train_tokenizer  # noqa: E402

DEFAULT_BASE_MODEL = ROOT / "recipes" / "toy_checkpoints" / "vlm-caption"
SHAPE = "blip2-opt-2.7b-shape"
LATENCY_LIMIT = 1.01
# Object names of different lengths, so batched prompts are padded as in PIN's evaluation; batch b takes the first b.
OBJECTS = ("cat", "red star", "striped blue ring", "apple", "orange heart", "dog", "traffic light", "green moon")
TRAIN_METHODS = (
    ("pin_cached", "PIN, cached ViT outputs (as the recipe trains)"),
    ("pin_uncached", "PIN, from pixels"),
    ("lora_phi", "LoRA-φ (r=16, α=16), from pixels"),
)


# ---------------------------------------------------------------------------------------------------- bases
def blip2_opt_2_7b_shape_config(image_token_id: int) -> Blip2Config:
    """Salesforce/blip2-opt-2.7b's shape: EVA ViT-g (the Blip2VisionConfig defaults, spelled out), default Q-Former
    with 32 queries, OPT-2.7B. `image_token_id`: the prompt's `<image>` id (any id below the vocabulary size)."""
    return Blip2Config(
        vision_config=dict(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=39,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
        ),
        text_config=dict(
            model_type="opt",
            hidden_size=2560,
            num_hidden_layers=32,
            num_attention_heads=32,
            ffn_dim=10240,
            vocab_size=50272,
            max_position_embeddings=2048,
            word_embed_proj_dim=2560,
            do_layer_norm_before=True,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        ),
        num_query_tokens=32,
        image_token_index=image_token_id,
    )


def shape_processor() -> PinProcessor:
    """PIN's processor for the BLIP-2 OPT-2.7B shape: a toy OPT-style tokenizer (ids 0-3 `<s> <pad> </s> <unk>` as
    OPT's) trained on PIN's prompts and box texts, plus `<image>`; 224 px squashing image processor."""
    ticks = " ".join(str(14 * i) for i in range(17))
    corpus = [f"{pin_prompt(n)} [14,28,112,210]" for n in OBJECTS]
    tok = train_tokenizer("opt", [*corpus, ticks] * 4)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = BlipImageProcessor(size={"height": 224, "width": 224})
    return PinProcessor(image_processor, tok, num_image_tokens=32, image_size=224)


def load_bases(args, device: torch.device) -> tuple:
    """(base for the base/PIN units, a second identical base for LoRA-φ, PinProcessor, description)."""
    if args.base == SHAPE:
        processor = shape_processor()
        config = blip2_opt_2_7b_shape_config(processor.image_token_id)
        bases = []
        for _ in range(2):
            torch.manual_seed(0)
            with build_context(device, args.dtype):
                bases.append(Blip2ForConditionalGeneration(config).eval())
        for base in bases:
            base.generation_config.pad_token_id = config.text_config.pad_token_id
            base.generation_config.eos_token_id = config.text_config.eos_token_id
        return bases[0], bases[1], processor, f"{SHAPE} (random weights)"
    path = str(args.base_model)
    (base, base_processor), (lora_base, _) = load_base(path, device), load_base(path, device)
    if args.dtype is not None:
        base, lora_base = base.to(args.dtype), lora_base.to(args.dtype)
    return base, lora_base, PinProcessor.from_base_processor(base_processor), path


# ---------------------------------------------------------------------------------------------------- inputs
def noise_image(size: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def pin_inputs(processor: PinProcessor, batch: int, device, dtype, targets: bool = False) -> dict:
    """`batch` localisation prompts on noise images (left-padded for generate), or with `targets` the training batch
    (box targets, labels on the box span, right padding), as the PinProcessor builds them."""
    size = processor.image_size
    images = [noise_image(size, seed=i) for i in range(batch)]
    objects = [OBJECTS[i % len(OBJECTS)] for i in range(batch)]
    boxes = None
    if targets:  # boxes inside the image, different per sample
        boxes = [
            [size * (0.05 + 0.02 * (i % 8)), size * 0.1, size * (0.55 + 0.05 * (i % 8)), size * 0.9]
            for i in range(batch)
        ]
    out = processor(images=images, objects=objects, boxes=boxes)
    return {k: v.to(device, dtype) if k == "pixel_values" else v.to(device) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------- units
def generate_unit(model, inputs: dict, clock: Clock, args, **extra):
    """One inference unit: median ms of `--calls` greedy generations of exactly `--new-tokens` tokens."""
    kwargs = dict(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, num_beams=1, use_cache=True
    )
    length = inputs["input_ids"].shape[1]

    def run() -> dict:
        times = []
        for _ in range(args.calls):
            clock.sync()
            start = clock.mark()
            out = model.generate(**inputs, **kwargs, **extra)
            end = clock.mark()
            clock.sync()
            if out.shape[1] - length != args.new_tokens:
                raise RuntimeError(f"generated {out.shape[1] - length} tokens instead of {args.new_tokens}")
            times.append(clock.ms(start, end))
        return {"ms": statistics.median(times), "calls_ms": times}

    return run


def train_unit(model, inputs: dict, clock: Clock, args, device: torch.device):
    """One training unit: `--train-steps` AdamW steps (lr 1e-3, weight decay 0: the recipe's Adam) on `inputs`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    batch = inputs["input_ids"].shape[0]

    def run() -> dict:
        model.train()
        clock.sync()
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        if before is not None:
            torch.cuda.reset_peak_memory_stats(device)
        start = clock.mark()
        for _ in range(args.train_steps):
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        end = clock.mark()
        clock.sync()
        seconds = clock.ms(start, end) / 1e3
        rise = torch.cuda.max_memory_allocated(device) - before if before is not None else None
        return {
            "seconds": seconds,
            "samples_per_s": args.train_steps * batch / seconds,
            "loss": float(loss.detach()),
            "memory_rise_bytes": rise,
        }

    return run


def build_units(base, lora_base, processor: PinProcessor, args, device: torch.device, clock: Clock):
    """(units, facts about the models) for one base and its LoRA-φ copy."""
    dtype = next(base.parameters()).dtype
    grid = dict(grid_size=processor.grid_size, image_size=processor.image_size)
    pin = PinForLocalization.from_base(base, **grid)  # inference: ψ never trains, π computed once
    pin_train = PinForLocalization.from_base(base, **grid)  # its own ψ, trained by the PIN units
    lora = PeftBaseline(PinForLocalization.from_base(lora_base, **grid), "lora_phi", lora_r=16, lora_alpha=16)
    units, prompt_tokens = [], {}
    for group, batch in enumerate(args.batch_sizes):
        inputs = pin_inputs(processor, batch, device, dtype)
        prompt_tokens[str(batch)] = inputs["input_ids"].shape[1]
        units.append(Unit(f"infer/base/b{batch}", (group, 0), generate_unit(base, inputs, clock, args)))
        units.append(Unit(f"infer/pin/b{batch}", (group, 1), generate_unit(pin, inputs, clock, args, use_pin=True)))
    train = pin_inputs(processor, args.train_batch_size, device, dtype, targets=True)
    pixels = {k: train[k] for k in ("pixel_values", "input_ids", "attention_mask", "labels")}
    # The recipe's feature cache: the frozen ViT's outputs, computed once, outside the timed steps.
    cached = {
        **{k: v for k, v in pixels.items() if k != "pixel_values"},
        "vision_embeds": pin.encode_images(train["pixel_values"]),
    }
    group = len(args.batch_sizes)
    for slot, (model, inputs, (name, _)) in enumerate(
        zip((pin_train, pin_train, lora), (cached, pixels, pixels), TRAIN_METHODS)
    ):
        units.append(Unit(f"train/{name}", (group, slot), train_unit(model, inputs, clock, args, device)))
    trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    facts = {
        "vision_tokens": pin.config.num_positions,
        "vision_hidden_size": pin.config.vision_hidden_size,
        "pin_parameters": trainable(pin_train),
        "trainable_parameters": {
            "pin_cached": trainable(pin_train),
            "pin_uncached": trainable(pin_train),
            "lora_phi": trainable(lora),
        },
        "base_parameters": sum(p.numel() for p in base.parameters()),
        "base_class": type(base).__name__,
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_tokens": prompt_tokens,
        "train_tokens": train["input_ids"].shape[1],
    }
    return units, facts


# ---------------------------------------------------------------------------------------------------- report
def ratio_stats(ratios: list[float]) -> dict:
    s = spread(ratios)
    return {"ratio": s["median"], "range": [s["min"], s["max"]], "per_repeat": ratios}


def summarize(samples: dict, args, facts: dict) -> tuple[list, list, dict, dict]:
    """(inference rows, training rows, acceptance checks, training ratios) from the per-repeat samples."""
    inference, acceptance = [], {}
    for batch in args.batch_sizes:
        base, pin = samples[f"infer/base/b{batch}"], samples[f"infer/pin/b{batch}"]
        ratios = [p["ms"] / b["ms"] for p, b in zip(pin, base)]
        acceptance[f"pin_over_base_latency_b{batch}"] = check(ratios, LATENCY_LIMIT, at_most=True, paired=True)
        b_ms, p_ms = [s["ms"] for s in base], [s["ms"] for s in pin]
        inference.append(
            {
                "batch_size": batch,
                "prompt_tokens": facts["prompt_tokens"][str(batch)],
                "new_tokens": args.new_tokens,
                "base_ms": statistics.median(b_ms),
                "pin_ms": statistics.median(p_ms),
                "pin_over_base": acceptance[f"pin_over_base_latency_b{batch}"]["ratio"],
                "base_ms_range": [min(b_ms), max(b_ms)],
                "pin_ms_range": [min(p_ms), max(p_ms)],
                "repeats_base_ms": b_ms,
                "repeats_pin_ms": p_ms,
            }
        )
    training = []
    for name, label in TRAIN_METHODS:
        runs = samples[f"train/{name}"]
        rate = [s["samples_per_s"] for s in runs]
        rises = [s["memory_rise_bytes"] for s in runs if s["memory_rise_bytes"] is not None]
        training.append(
            {
                "method": name,
                "label": label,
                "batch_size": args.train_batch_size,
                "steps": args.train_steps,
                "trainable_parameters": facts["trainable_parameters"][name],
                "samples_per_s": statistics.median(rate),
                "samples_per_s_range": [min(rate), max(rate)],
                "repeats_samples_per_s": rate,
                "step_memory_gib": max(rises) / 2**30 if rises else None,
                "last_loss": runs[-1]["loss"],
            }
        )
    rate = {name: [s["samples_per_s"] for s in samples[f"train/{name}"]] for name, _ in TRAIN_METHODS}
    pairs = (
        ("pin_cached_over_lora_phi", "pin_cached", "lora_phi"),
        ("pin_uncached_over_lora_phi", "pin_uncached", "lora_phi"),
        ("pin_cached_over_pin_uncached", "pin_cached", "pin_uncached"),
    )
    ratios = {key: ratio_stats([x / y for x, y in zip(rate[a], rate[b])]) for key, a, b in pairs}
    return inference, training, acceptance, ratios


def markdown(report: dict) -> str:
    meta, facts = report["meta"], report["models"]
    span = lambda r, spec: f"{r[0]:{spec}}–{r[1]:{spec}}"
    lines = [
        f"Device: {meta['device']} · torch {meta['torch']} · transformers {meta['transformers']} · {facts['dtype']} · "
        f"{meta['date']} · commit {meta['git_commit']}",
        f"Command: `{meta['command']}` (median of {meta['repeats']} repeats after {meta['warmup']} warm-up rounds; "
        f"units interleaved, the order rotated per repeat; ratios paired within a repeat; wall {meta['wall_s']:.0f} s)",
        f"Base: {meta['base']} ({facts['base_class']}, {facts['base_parameters'] / 1e6:.1f}M parameters); PIN on "
        f"N={facts['vision_tokens']} vision tokens of width D={facts['vision_hidden_size']}: ψ has "
        f"{facts['pin_parameters']:,} parameters; LoRA-φ {facts['trainable_parameters']['lora_phi']:,}.",
        "",
    ]
    for name, c in report["acceptance"].items():
        lines.append(
            f"- {name}: {c['ratio']:.3f} <= {c['limit']} -> {'PASS' if c['pass'] else 'FAIL'} (median of "
            f"{len(c['per_repeat'])} paired per-repeat ratios, range {span(c['range'], '.3f')})"
        )
    for name, c in report["training_ratios"].items():
        lines.append(
            f"- {name}_train_samples_per_s: {c['ratio']:.2f}x (informational, no bar; range {span(c['range'], '.2f')})"
        )
    lines += [
        "",
        f"| generate ({meta['new_tokens']} new tokens, greedy, median of {meta['calls']} calls per unit) | batch | "
        "prompt tokens (with image slots) | base ms | PIN ms | PIN / base | base ms min–max | PIN ms min–max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["inference"]:
        lines.append(
            f"| PIN vs base | {r['batch_size']} | {r['prompt_tokens']} | {r['base_ms']:.2f} | {r['pin_ms']:.2f} "
            f"| {r['pin_over_base']:.3f} | {span(r['base_ms_range'], '.2f')} | {span(r['pin_ms_range'], '.2f')} |"
        )
    lines += [
        "",
        f"| training ({meta['train_steps']} AdamW steps per unit, {facts['train_tokens']} tokens per sequence) | batch | "
        "trainable parameters | samples/s | samples/s min–max | step memory GiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["training"]:
        memory = "n/a" if r["step_memory_gib"] is None else f"{r['step_memory_gib']:.2f}"
        lines.append(
            f"| {r['label']} | {r['batch_size']} | {r['trainable_parameters']:,} | {r['samples_per_s']:.1f} | "
            f"{span(r['samples_per_s_range'], '.1f')} | {memory} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--base_model",
        type=Path,
        default=None,
        help=f"BLIP-2/VPGTrans checkpoint folder with its processor (default: {DEFAULT_BASE_MODEL})",
    )
    which.add_argument("--base", choices=(SHAPE,), default=None, help="random-weight paper-scale shape (CUDA)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help=f"default: bfloat16 for {SHAPE}, the checkpoint's own dtype otherwise",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="generate batch sizes")
    parser.add_argument("--new-tokens", type=int, default=12, help="tokens generated per call (PIN's eval: 12)")
    parser.add_argument("--calls", type=int, default=5, help="generate calls per inference unit and repeat (median)")
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=5, help="optimizer steps per training unit and repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds over all units first")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT if set, else none)")
    args = parser.parse_args(argv)
    if (
        min(args.new_tokens, args.calls, args.train_batch_size, args.train_steps, args.repeats, *args.batch_sizes) < 1
        or args.warmup < 0
    ):
        parser.error(
            "need positive --new-tokens, --calls, --train-batch-size, --train-steps, --repeats and batch "
            "sizes, and --warmup >= 0"
        )
    if len(set(args.batch_sizes)) != len(args.batch_sizes):
        parser.error(f"--batch-sizes must not repeat a size: {args.batch_sizes}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA GPU is available")
    if args.base == SHAPE and args.device != "cuda":
        parser.error(f"--base {SHAPE} builds a 3.8B-parameter model: it needs --device cuda")
    if args.base is None and args.base_model is None:
        args.base_model = DEFAULT_BASE_MODEL
    if args.dtype is None and args.base == SHAPE:
        args.dtype = "bfloat16"
    args.dtype = getattr(torch, args.dtype) if args.dtype else None
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    clock = Clock(device)
    start = time.perf_counter()
    base, lora_base, processor, base_name = load_bases(args, device)
    units, facts = build_units(base, lora_base, processor, args, device, clock)
    print(
        f"base {base_name}: {facts['base_parameters'] / 1e6:.1f}M parameters ({facts['dtype']}); PIN ψ "
        f"{facts['pin_parameters']:,}; LoRA-φ {facts['trainable_parameters']['lora_phi']:,}",
        flush=True,
    )
    samples, _, orders, wall = run_rounds(units, args.repeats, args.warmup)
    del units, base, lora_base
    release(device)
    inference, training, acceptance, ratios = summarize(samples, args, facts)
    report = {
        "meta": {
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "git_commit": git_commit(),
            "command": " ".join(["python benchmarks/pin_speed.py", *(argv if argv is not None else sys.argv[1:])]),
            "base": base_name,
            "batch_sizes": args.batch_sizes,
            "new_tokens": args.new_tokens,
            "calls": args.calls,
            "train_batch_size": args.train_batch_size,
            "train_steps": args.train_steps,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "wall_s": time.perf_counter() - start,
        },
        "models": facts,
        "inference": inference,
        "training": training,
        "acceptance": acceptance,
        "training_ratios": ratios,
        "rounds": {"orders": orders, "warmup_rounds": args.warmup, "wall_s": wall},
        "samples": samples,
    }
    write_report("pin_speed", report, markdown(report), args.out)
    return report


if __name__ == "__main__":
    main()
