"""Groma-7B shape vs LLaVA-1.5-7B shape: visual tokens, TTFT, decode tokens/s and peak memory, batch 1 and 8.

Both models are built with random weights directly on the GPU in bf16 (no checkpoint needed) and stay resident
together (~29 GB; `--sequential` builds, measures and frees one at a time instead). Each measurement is a unit:

- per batch size: Groma generating with its vision side as a CUDA graph (the default, `vision_cuda_graphs=True`) in
  its own greedy loop (the default for these plain greedy calls, static_greedy.py), the same model with
  `vision_cuda_graphs=False` (the flag is read at every call, so one model serves both), the same in transformers'
  loop (`static_greedy=False`; also with the per-token stop check and with a dynamic cache), and LLaVA: TTFT = `model.generate(...)` from input tensors on the device to the first token's
  logits (vision side, Groma's proposer/region selection/region encoder, LLM prefill and generate's own setup);
  decode tokens/s = the `--new-tokens` - 1 greedy KV-cache steps after it (`min_new_tokens` forces the length; the
  same inputs every time), per sequence and for the batch;
- batch 1: where each TTFT goes (stage boundaries on the device timeline, Groma per variant), and DINOv2, Groma's
  LLM prefill, CLIP and LLaVA's LLM prefill each alone (median of `--component-calls` back-to-back calls).

After `--warmup` untimed rounds over all units, each of `--repeats` rounds runs every unit once, in the base order
rotated by one per round (ABC, BCA, CAB, ...), so drift of clocks, allocator state or host load hits all units alike
instead of whichever model ran in a later phase. Reported: the median over the repeats with min-max. The acceptance
checks are ratios formed within one repeat, PASS/FAIL on their median (min-max shown): Groma batch-1
TTFT <= 1.5 x (DINOv2 alone + LLM prefill alone), and Groma decode >= 0.97 x LLaVA's per batch size, for both
vision variants. Peak memory: the model's own parameters and buffers + the largest rise of allocated memory during
one of its generate runs (warm-ups included, so Groma's graph capture counts; the other model's weights do not).
CUDA events time the GPU (no host sync inside a timed region).

After the timed rounds, untimed: why the Groma variants' greedy tokens differ, if they do. Per batch size, one
generate with `output_scores=True` on a reference path (eager vision, dynamic cache: no CUDA graphs, no compiled
decoding step) and one per variant; per batch row the first step where the tokens part, the reference's margin
(top-1 minus top-2 score) there, whether the variant's token was the reference's top-2, and the paths' score
difference on the steps before. A flip at a gap within `--tie-tolerance` (default 0.1) is a tie-flip (bf16 rounding
noise on near-flat random-weight logits), above it a real divergence (report key `token_divergence`).

Prompts: there is no Llama tokenizer offline, so a toy Llama-style tokenizer (groundvlm.recipes.toyworld.tokenizers,
`<unk> <s> </s>` = 0 1 2, trained on the prompt text, so about one token per word) gets Groma's 114 tokens with
`add_groma_tokens`, and `GromaProcessor` builds the real Groma template (system prompt, fixed first turn with 256
`<image>` slots and 100 `<r_j><region>` pairs, a grounding question) on images of common sizes. The added tokens are
then remapped onto the 7B vocabulary (toy base vocabulary + k -> 32000 + k); base ids stay (they are valid 7B ids).
LLaVA gets `USER: <image>\\n{same question without Groma markup} ASSISTANT:` with 576 image tokens (id 32000).

Usage (repo root): `python benchmarks/groma_speed.py` (GPU, ~3 min on an H200) or `python benchmarks/groma_speed.py
--tiny` (CPU, tiny configs, seconds). Writes groma_speed.json and groma_speed.md to $OUT if set, else to `--out` if
given. The JSON holds the medians in the earlier keys (`results`, `*_batch1_components`, `acceptance[...]["ratio"]`)
and the spread beside them (`*_range`, `repeats_*`, `batch1_component_ranges`, `acceptance[...]["per_repeat"]`),
the rotated orders (`rounds`) and every unit's per-repeat values (`samples`).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import re
import statistics
import sys
import time
import types
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import LlavaConfig, LlavaForConditionalGeneration, LogitsProcessor, LogitsProcessorList

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/_groma_tiny.py

from groundvlm.modeling import GromaConfig, GromaForConditionalGeneration  # noqa: E402
from groundvlm.modeling.static_greedy import StaticGreedyDecoder, static_greedy_settings  # noqa: E402
from groundvlm.processing import GromaImageProcessor, GromaProcessor, add_groma_tokens, build_groma_prompt  # noqa: E402
from groundvlm.processing.processing_groma import FIRST_ASSISTANT_TURN, FIRST_USER_TURN, SYSTEM_PROMPT  # noqa: E402
from groundvlm.recipes.common.provenance import git_commit  # noqa: E402
from groundvlm.recipes.toyworld.tokenizers import train_tokenizer  # noqa: E402
from tests._groma_tiny import tiny_groma_config  # noqa: E402

# Grounding questions in Groma's formats (REC with <p>..</p>, [grounding] captions), of different lengths so that
# batches are left-padded. Batch b takes the first b (cycled) with the image sizes below (height, width).
QUESTIONS = (
    "Locate <p>the person holding a red umbrella</p> in the image.",
    "[grounding]Give me a concise description of the image.",
    "[grounding]Describe this image in detail, mentioning every object you can see and where it is.",
    "Which object is closest to the camera? Answer with its region.",
)
IMAGE_SIZES = ((480, 640), (375, 500), (640, 427), (512, 512))
LLAVA_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"


def llava_7b_config() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (576 tokens from layer -2), mlp2x_gelu, Vicuna-7B (32064 rows)."""
    return LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
        ),
        text_config=dict(
            model_type="llama",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            pad_token_id=32001,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        ),
        image_token_index=32000,
        image_seq_length=576,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def tiny_configs(tok, base_vocab: int) -> tuple[GromaConfig, LlavaConfig]:
    """CPU-sized stand-ins with the same structure: the tests' tiny Groma (tests/_groma_tiny.py: 112 px, 16 image
    tokens) with `tok`'s token ids, and a LLaVA of the same LLM size with 64 image tokens."""
    text = dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    groma = tiny_groma_config(tok)
    llava = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=112,
            patch_size=14,
            projection_dim=32,
        ),
        text_config=dict(text, vocab_size=base_vocab + 64, pad_token_id=base_vocab + 1),
        image_token_index=base_vocab,
        image_seq_length=64,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return groma, llava


# ---------------------------------------------------------------------------------------------------- inputs
def toy_tokenizer():
    """Toy Llama-style tokenizer trained on the prompt text (`<unk> <s> </s>` = 0 1 2) + Groma's 114 tokens."""
    # trained on the text without markup: Groma's tokens must not exist before add_groma_tokens gives them their ids
    corpus = [strip_groma_markup(t) for t in (SYSTEM_PROMPT, FIRST_USER_TURN, FIRST_ASSISTANT_TURN, *QUESTIONS)]
    tok = train_tokenizer("llama", corpus * 4)
    base = len(tok)
    add_groma_tokens(tok)
    tok.model_max_length = 4096
    return tok, base


def strip_groma_markup(text: str) -> str:
    """Drop `[grounding]` and tags such as `<p>`, `</p>`, `<image>`."""
    return re.sub(r"\[grounding\]|</?[a-z_]+>", "", text)


def noise_image(height: int, width: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def groma_inputs(tok, base_vocab: int, config: GromaConfig, batch: int, device) -> dict:
    """Processor output for `batch` prompts, added-token ids moved to `config`'s (toy base + k -> [PAD] id + k)."""
    size = config.image_size
    processor = GromaProcessor(
        GromaImageProcessor(size={"height": size, "width": size}),
        tok,
        num_image_tokens=config.num_image_tokens,
        num_proxy_tokens=config.num_proxy_tokens,
    )
    texts = [build_groma_prompt(QUESTIONS[i % len(QUESTIONS)]) for i in range(batch)]
    images = [noise_image(*IMAGE_SIZES[i % len(IMAGE_SIZES)], seed=i) for i in range(batch)]
    out = processor(images=images, text=texts)
    ids = out["input_ids"]
    ids = torch.where(ids >= base_vocab, ids - base_vocab + config.pad_token_id, ids)
    if not (
        ((ids == config.image_token_id).sum(1) == config.num_image_tokens).all()
        and ((ids == config.region_token_id).sum(1) == config.num_proxy_tokens).all()
    ):
        raise RuntimeError("the remapped prompt does not hold the config's <image>/<region> slots; check the token ids")
    return {
        "input_ids": ids.to(device),
        "attention_mask": out["attention_mask"].to(device),
        "pixel_values": out["pixel_values"].to(device),
    }


def llava_inputs(tok, config: LlavaConfig, batch: int, device, dtype) -> dict:
    """`USER: <image>\\n{question} ASSISTANT:` with `image_seq_length` image tokens, left-padded."""
    rows = []
    for i in range(batch):
        before, after = LLAVA_TEMPLATE.format(question=strip_groma_markup(QUESTIONS[i % len(QUESTIONS)])).split(
            "<image>"
        )
        rows.append(
            tok(before)["input_ids"]
            + [config.image_token_index] * config.image_seq_length
            + tok(after, add_special_tokens=False)["input_ids"]
        )
    width = max(map(len, rows))
    pad = config.text_config.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "pixel_values": pixels.to(device, dtype)}


# ---------------------------------------------------------------------------------------------------- timing
class Clock:
    """CUDA events on the GPU (no host sync inside a timed region), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, end) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


class FirstLogitsMark(LogitsProcessor):
    """Marks the moment the first token's logits exist (generate calls logits processors once per step)."""

    def __init__(self, clock: Clock):
        self.clock, self.first = clock, None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = self.clock.mark()
        return scores


class StageMarks:
    """Clock marks around the first call of named submodules or methods, e.g. during one prefill inside `generate`:
    where the time to first token goes, on the device's timeline (launch gaps included).

    A stage is a module (forward hooks) or an `(object, method_name)` pair (the bound method is wrapped on the
    instance, no hook: Groma replays its vision CUDA graphs only while no vision module has forward hooks)."""

    def __init__(self, clock: Clock, stages: dict):
        self.clock, self.marks = clock, {}
        self.handles = []
        for name, stage in stages.items():
            if isinstance(stage, tuple):
                self.handles.append(self._wrap(name, *stage))
            else:
                self.handles.append(stage.register_forward_pre_hook(lambda mod, args, n=name: self._start(n)))
                self.handles.append(stage.register_forward_hook(lambda mod, args, out, n=name: self._end(n)))

    def _wrap(self, name: str, owner, method: str):
        original = getattr(owner, method)

        def wrapped(*args, **kwargs):
            self._start(name)
            out = original(*args, **kwargs)
            self._end(name)
            return out

        setattr(owner, method, wrapped)
        return types.SimpleNamespace(remove=lambda: delattr(owner, method))

    def _start(self, name):
        self.marks.setdefault(name, [self.clock.mark(), None])

    def _end(self, name):
        if self.marks[name][1] is None:
            self.marks[name][1] = self.clock.mark()

    def remove(self):
        for handle in self.handles:
            handle.remove()


def time_call(clock: Clock, fn, calls: int) -> float:
    """Median ms of `calls` back-to-back runs of `fn()`: one repeat's sample of a component timed alone."""
    times = []
    for _ in range(calls):
        clock.sync()
        start = clock.mark()
        fn()
        end = clock.mark()
        clock.sync()
        times.append(clock.ms(start, end))
    return statistics.median(times)


def generate_once(
    model, inputs: dict, clock: Clock, new_tokens: int, device: torch.device, cache: str | None = None, **extra
) -> dict:
    """One greedy generation of exactly `new_tokens` tokens: TTFT (ms), the decode time of the `new_tokens - 1` steps
    after the first token (ms, and as tokens/s per sequence), how far allocated memory rose above its level at
    the start (bytes; None off CUDA) and a digest of the generated ids (`tokens`, to compare variants).
    `cache`: the `cache_implementation` to ask for; None = the model's own generation_config (Groma: "static");
    `extra`: more `generate` arguments of the path (Groma: `defer_stop_check`)."""
    kwargs = {**greedy_kwargs(new_tokens, cache), **extra}
    # Groma's own greedy loop takes plain greedy calls only (a logits processor sends the call to transformers' loop),
    # so there the first token is marked where that loop has chosen it; elsewhere a logits processor marks it.
    own_loop = isinstance(model, GromaForConditionalGeneration) and extra.get("static_greedy", True)
    own_loop = own_loop and static_greedy_settings(model, kwargs, inputs["input_ids"].shape[1]) is not None
    marker = FirstLogitsMark(clock)
    clock.sync()
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    reset_peak(device)
    start = clock.mark()
    with counting_deferred_stop_checks() as deferred, first_token_of_own_loop(marker, own_loop):
        processors = {} if own_loop else {"logits_processor": LogitsProcessorList([marker])}
        out = model.generate(**inputs, **processors, **kwargs)
    end = clock.mark()
    clock.sync()
    generated = out.shape[1] - inputs["input_ids"].shape[1]
    if generated != new_tokens:
        raise RuntimeError(f"generated {generated} tokens instead of {new_tokens}")
    decode = clock.ms(marker.first, end)
    rise = torch.cuda.max_memory_allocated(device) - before if before is not None else None
    return {
        "ttft_ms": clock.ms(start, marker.first),
        "decode_ms": decode,
        "decode_tokens_per_s": (new_tokens - 1) / (decode / 1e3),
        "memory_rise_bytes": rise,
        "tokens": tokens_digest(out[:, -new_tokens:]),
        "deferred_stop_check": deferred[0] > 0,  # observed: transformers built its DeferredStopCheck in this generate
    }


@contextmanager
def first_token_of_own_loop(marker: FirstLogitsMark, active: bool):
    """Inside the block, `marker` marks the moment Groma's greedy loop has its first token (the start of its decoding
    steps, static_greedy.py) — the place a logits processor marks in transformers' loop."""
    if not active:
        yield
        return
    original = StaticGreedyDecoder._decode

    def marked(self, *args, **kwargs):
        marker(None, None)
        return original(self, *args, **kwargs)

    StaticGreedyDecoder._decode = marked
    try:
        yield
    finally:
        StaticGreedyDecoder._decode = original


@contextmanager
def counting_deferred_stop_checks():
    """Counts the `DeferredStopCheck`s transformers builds inside the block (a one-element list; [0] without one)."""
    from transformers.generation import utils

    count = [0]
    check = getattr(utils, "DeferredStopCheck", None)
    if check is None:
        yield count
        return
    init = check.__init__

    def counted(self, *args, **kwargs):
        count[0] += 1
        init(self, *args, **kwargs)

    check.__init__ = counted
    try:
        yield count
    finally:
        check.__init__ = init


def greedy_kwargs(new_tokens: int, cache: str | None) -> dict:
    """`generate` arguments of every Groma/LLaVA run here: greedy, exactly `new_tokens` tokens, KV cache on;
    `cache`: the `cache_implementation` to ask for (None = the model's own generation_config)."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True)
    if cache is not None:
        kwargs["cache_implementation"] = cache
    return kwargs


def tokens_digest(tokens: torch.Tensor) -> str:
    """Short sha1 of generated ids (batch, steps): equal digests, equal tokens."""
    return hashlib.sha1(tokens.cpu().numpy().tobytes()).hexdigest()[:16]


def ttft_breakdown_once(model, inputs: dict, modules: dict, clock: Clock, nested: dict | None = None) -> dict:
    """ms of each named stage's first call inside one `generate(max_new_tokens=1)`, plus `other` (generate's setup,
    embeddings, host syncs: TTFT minus the named stages, which must not overlap) and that run's `ttft`, as
    `in_ttft_{name}_ms`. `nested` stages (inside one of `modules`) are reported too, but not subtracted."""
    nested = nested or {}
    stages, marker = StageMarks(clock, {**modules, **nested}), FirstLogitsMark(clock)
    clock.sync()
    start = clock.mark()
    try:
        model.generate(
            **inputs, logits_processor=LogitsProcessorList([marker]), max_new_tokens=1, do_sample=False, use_cache=True
        )
    finally:
        stages.remove()
    clock.sync()
    run = {name: clock.ms(a, b) for name, (a, b) in stages.marks.items()}
    run["ttft"] = clock.ms(start, marker.first)
    run["other"] = run["ttft"] - sum(run[name] for name in modules)
    return {f"in_ttft_{name}_ms": run[name] for name in [*modules, *nested, "other", "ttft"]}


# ---------------------------------------------------------------------------------------------------- divergence
# Greedy tokens of two generate paths part at the first step where the argmax differs. On random weights the logits
# are nearly flat, so a top-1/top-2 gap below the rounding noise of a bf16 forward (a different reduction order in a
# compiled or graph-captured kernel) flips the argmax without anything being wrong: a tie-flip. A flip at a gap
# well above that noise is a real difference between the paths. The default tolerance lies between one bf16 spacing
# of logits of magnitude 8-16 (2^-4) and of 16-32 (2^-3); `--tie-tolerance` sets another.
TIE_TOLERANCE = 0.1


def bf16_spacing(value: float) -> float | None:
    """Distance between adjacent bfloat16 numbers (8 significant bits) at |value|; None for 0 or non-finite."""
    if value == 0 or not np.isfinite(value):
        return None
    _, exponent = np.frexp(abs(value))  # |value| = m * 2^exponent, m in [0.5, 1)
    return float(2.0 ** (int(exponent) - 8))


def finite_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| where both are finite, 0 elsewhere (tokens masked to -inf by a logits processor in both)."""
    both = torch.isfinite(a) & torch.isfinite(b)
    return torch.where(both, (a.float() - b.float()).abs(), torch.zeros((), device=a.device))


def token_divergence(
    ref_tokens: torch.Tensor,
    ref_scores,
    other_tokens: torch.Tensor,
    other_scores=None,
    tie_tolerance: float = TIE_TOLERANCE,
) -> list[dict]:
    """Per batch row, where greedy `other_tokens` first part from `ref_tokens` (both (batch, steps) generated ids)
    and how close that call was. `ref_scores` / `other_scores`: per step a (batch, vocab) tensor of the scores the
    argmax was taken over (generate's `scores` with `output_scores=True`, i.e. after the logits processors), or one
    (steps, batch, vocab) tensor. Step 0 is the first generated token (the prefill's logits).

    Each row: `step` (first differing step, None if identical) and `kind` ("identical", "tie-flip": the reference
    scored the other path's token within `tie_tolerance` of its own, "real": further apart). With `other_scores`,
    `max_abs_score_diff_before`: the largest |score difference| between the paths over the steps before `step` (all
    steps if identical), where both saw the same prefix: the paths' own noise on these logits. At `step` also:
    the two tokens, the reference's `ref_top1` and its bf16 spacing, `ref_margin` (top-1 minus top-2),
    `ref_gap_to_other` (its top-1 minus its score of the other path's token; = the margin when that token is its
    top-2), `other_rank_in_ref` (2 = top-2; an exact tie with the top-1 counts as 2), `other_is_ref_top2`, and with
    `other_scores` the other path's `other_margin` and `other_gap_to_ref` (its score of its token minus its score
    of the reference's token)."""
    ref_tokens, other_tokens = ref_tokens.cpu(), other_tokens.cpu()
    batch, steps = ref_tokens.shape
    if other_tokens.shape != ref_tokens.shape or len(ref_scores) != steps:
        raise ValueError(
            f"tokens {tuple(ref_tokens.shape)} vs {tuple(other_tokens.shape)} and {len(ref_scores)} score steps "
            "do not match"
        )
    if other_scores is not None and len(other_scores) != steps:
        raise ValueError(f"{len(other_scores)} score steps of the other path for {steps} tokens")
    noise = None
    if other_scores is not None:  # (batch, steps): max |difference| over the vocabulary per row and step
        noise = torch.stack([finite_abs_diff(a, b).amax(-1) for a, b in zip(ref_scores, other_scores)], 1).cpu()
    differ = ref_tokens != other_tokens
    rows = []
    for i in range(batch):
        hits = differ[i].nonzero()
        step = int(hits[0, 0]) if len(hits) else None
        row: dict = {"step": step}
        if noise is not None:
            before = noise[i, : steps if step is None else step]
            row["max_abs_score_diff_before"] = float(before.max()) if len(before) else None
        if step is None:
            rows.append({**row, "kind": "identical"})
            continue
        ref_token, other_token = int(ref_tokens[i, step]), int(other_tokens[i, step])
        scores = ref_scores[step][i].float().cpu()
        top = scores.topk(2).values
        gap = float(scores[ref_token] - scores[other_token])
        above = scores > scores[other_token]
        above[ref_token] = True  # the reference's own token ranks above the other one (exact ties included)
        above[other_token] = False
        rank = int(above.sum()) + 1
        row.update(
            ref_token=ref_token,
            other_token=other_token,
            ref_top1=float(top[0]),
            ref_top1_bf16_spacing=bf16_spacing(float(top[0])),
            ref_margin=float(top[0] - top[1]),
            ref_gap_to_other=gap,
            other_rank_in_ref=rank,
            other_is_ref_top2=rank == 2,
        )
        if other_scores is not None:
            theirs = other_scores[step][i].float().cpu()
            their_top = theirs.topk(2).values
            row["other_margin"] = float(their_top[0] - their_top[1])
            row["other_gap_to_ref"] = float(theirs[other_token] - theirs[ref_token])
        row["kind"] = "tie-flip" if gap <= tie_tolerance else "real"
        rows.append(row)
    return rows


def divergence_summary(rows: list[dict]) -> dict:
    """One (path, batch size)'s rows of `token_divergence` in a few numbers; None where no row diverged. Verdict:
    "identical", "tie-flips only", "regions differ" (a row's region count differs, so its prompt does: the tokens
    are not comparable step by step) or "real divergence" (some row flipped at a gap above the tolerance)."""
    diverged = [r for r in rows if r["step"] is not None]
    flips = [r for r in diverged if r["kind"] == "tie-flip"]
    real = [r for r in diverged if r["kind"] == "real"]
    regions = [r for r in rows if r.get("region_count_equal") is False]
    noise = [r["max_abs_score_diff_before"] for r in rows if r.get("max_abs_score_diff_before") is not None]
    pick = lambda fn, key: fn(r[key] for r in diverged) if diverged else None
    if real:
        verdict = "real divergence"
    elif regions:
        verdict = "regions differ"
    elif flips:
        verdict = "tie-flips only"
    else:
        verdict = "identical"
    return {
        "rows": len(rows),
        "identical_rows": len(rows) - len(diverged),
        "identical_fraction": (len(rows) - len(diverged)) / len(rows),
        "median_first_divergence_step": pick(statistics.median, "step"),
        "min_first_divergence_step": pick(min, "step"),
        "max_ref_margin_at_divergence": pick(max, "ref_margin"),
        "max_ref_gap_at_divergence": pick(max, "ref_gap_to_other"),
        "other_is_ref_top2_rows": sum(r["other_is_ref_top2"] for r in diverged),
        "tie_flips": len(flips),
        "real_divergences": len(real),
        "region_count_mismatches": len(regions),
        "max_abs_score_diff_before_divergence": max(noise) if noise else None,
        "verdict": verdict,
    }


def scored_generate(model, inputs: dict, new_tokens: int, cache: str | None, **extra):
    """The greedy generation of `generate_once` (same length, same cache choice and extra arguments), untimed,
    returning generate's dict with the per-step `scores` the argmax was taken over."""
    return model.generate(
        **inputs, return_dict_in_generate=True, output_scores=True, **greedy_kwargs(new_tokens, cache), **extra
    )


# The reference for the divergence check: no vision CUDA graphs, a dynamic KV cache (so no compiled decoding step):
# every kernel eager. Each Groma variant differs from it in its vision side, its cache, or (the default) both.
GROMA_REFERENCE = ("eager vision, dynamic cache", False, "dynamic", {})


def groma_divergence(model, inputs: dict, new_tokens: int, variant, tie_tolerance: float) -> list[dict]:
    """Per batch size: one untimed scored generate on the reference path (`GROMA_REFERENCE`), then one per Groma
    variant, each compared with the reference by `token_divergence`; rows also tell whether the variant selected
    as many regions as the reference (`region_count_equal`; a different count changes the prompt), the largest
    difference of the selected boxes (`max_region_box_diff`, None when the counts differ) and of the image
    embeddings (`max_image_embeds_abs_diff`): noise that starts on the vision side shows there."""
    entries = []
    _, ref_graphs, ref_cache, ref_extra = GROMA_REFERENCE
    for batch, inp in inputs.items():
        ref = variant(ref_graphs, lambda inp=inp: scored_generate(model, inp, new_tokens, ref_cache, **ref_extra))()
        ref_tokens = ref.sequences[:, -new_tokens:]
        for vision, graphs, cache, extra in GROMA_VARIANTS:
            out = variant(
                graphs,
                lambda inp=inp, cache=cache, extra=extra: scored_generate(model, inp, new_tokens, cache, **extra),
            )()
            tokens = out.sequences[:, -new_tokens:]
            rows = token_divergence(ref_tokens, ref.scores, tokens, out.scores, tie_tolerance)
            for i, row in enumerate(rows):
                a, b = ref.region_boxes[i], out.region_boxes[i]
                row["region_count_equal"] = len(a) == len(b)
                row["max_region_box_diff"] = float((a - b).abs().max()) if len(a) == len(b) and len(a) else None
                row["max_image_embeds_abs_diff"] = float(
                    finite_abs_diff(ref.image_hidden_states[i], out.image_hidden_states[i]).max()
                )
                if not row["region_count_equal"] and row["step"] is not None:
                    row["kind"] = "regions differ"
            entries.append(
                {
                    "path": vision,
                    "unit": f"groma/{vision}/b{batch}",
                    "batch_size": batch,
                    **divergence_summary(rows),
                    "tokens": tokens_digest(tokens),
                    "reference_tokens": tokens_digest(ref_tokens),
                    "per_row": rows,
                }
            )
            del out
        del ref
    return entries


# ---------------------------------------------------------------------------------------------------- repeats
class Unit(NamedTuple):
    """One timed item of a repeat: `run()` -> {metric: value}. `place` = (group, slot) sets its position in the base
    order (group: one batch size's generate runs, then the TTFT breakdowns, then the components alone; slot: Groma
    with graphs, Groma eager, LLaVA), which each repeat rotates by one."""

    name: str
    place: tuple[int, int]
    run: Callable[[], dict]


def rotated_orders(names: list[str], repeats: int) -> list[list[str]]:
    """Repeat r runs the base order rotated by r (ABC, BCA, CAB, ...), so slow drift (clocks, allocator state, host
    load) falls on every unit alike instead of on whichever ran in a later phase."""
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(repeats)]


def run_rounds(
    units: list[Unit], repeats: int, warmup: int, on_round: Callable[[dict], None] | None = None
) -> tuple[dict, dict, list[list[str]], float]:
    """`warmup` untimed rounds in the base order (Groma's graph capture, cuBLAS/SDPA kernel choice and the caching
    allocator settle there), then `repeats` rounds in rotated orders.
    The garbage collector never runs inside a unit (a pause inside a host-bound decode would land on a random unit)
    but between any two, so no unit's garbage (KV caches held by reference cycles) is left to the next; the objects
    that exist before the rounds (the models) are frozen out of those collections, which keeps them short.
    `on_round({"samples", "warm", "rounds_done", "seconds"})` runs after every round (the partial record that
    survives a run cut short by a time limit).
    Returns (samples: name -> per-repeat dicts, warm: name -> warm-up dicts, orders, wall seconds)."""
    units = sorted(units, key=lambda u: u.place)
    by_name = {u.name: u for u in units}
    samples, warm = {u.name: [] for u in units}, {u.name: [] for u in units}
    orders = rotated_orders([u.name for u in units], repeats)
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for r, order in enumerate([[u.name for u in units]] * warmup + orders):
            timed = r >= warmup
            round_start = time.perf_counter()
            for name in order:
                gc.collect()
                (samples if timed else warm)[name].append(by_name[name].run())
            if on_round is not None:
                on_round(
                    {"samples": samples, "warm": warm, "rounds_done": r + 1, "seconds": time.perf_counter() - start}
                )
            label = f"repeat {r - warmup + 1}/{repeats}" if timed else f"warm-up {r + 1}/{warmup}"
            print(
                f"{label}: {len(order)} units in {time.perf_counter() - round_start:.1f} s, first {order[0]}",
                flush=True,
            )
    finally:
        gc.enable()
        gc.unfreeze()
    return samples, warm, orders, time.perf_counter() - start


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ---------------------------------------------------------------------------------------------------- models
@contextmanager
def build_context(device: torch.device, dtype: torch.dtype):
    """Allocate parameters directly on `device` in `dtype`: a 7B model is built and randomly initialised on the GPU
    in seconds (no fp32 copy on the host, no host-side init)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build(model_cls, config, device, dtype):
    clock = Clock(device)
    clock.sync()
    start = time.perf_counter()
    torch.manual_seed(0)
    with build_context(device, dtype):
        model = model_cls(config).eval()
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    clock.sync()
    return model, time.perf_counter() - start


def resident_bytes(model) -> int:
    """Parameters and buffers: the model's own share of allocated memory when several models share the GPU."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def release(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Bench(NamedTuple):
    """A built model's units and, per generate unit, the result row's fixed fields (no tensors: the rows outlive the
    model); `diagnose()`, if any, runs once after the timed rounds and returns tensor-free entries."""

    units: list[Unit]
    rows: dict[str, dict]
    resident_bytes: int
    diagnose: Callable[[], list[dict]] | None = None


# Groma rows: (name, vision CUDA graphs, cache_implementation, more generate arguments). The default: vision graphs on
# (eager off CUDA), the model's own static KV cache and Groma's greedy loop (static_greedy.py: on a GPU each token is
# one CUDA-graph replay of a compiled step); the default with an eager vision side; the default in transformers'
# loop (`static_greedy=False`: transformers compiles the forward, the stop check read one step late on CUDA, the
# default before Groma's loop); transformers' loop with its per-token stop check; and with vision graphs but a dynamic
# cache (the project's default before the static one). Only a plain greedy call takes Groma's loop, so the rows
# with other settings run in transformers' loop.
GROMA_VARIANTS = (
    ("cuda graphs", True, None, {}),
    ("eager", False, None, {}),
    ("transformers loop", True, None, {"static_greedy": False}),
    ("per-token stop check", True, None, {"defer_stop_check": False, "static_greedy": False}),
    ("dynamic cache", True, "dynamic", {}),
)
# LLaVA rows: (name, cache_implementation): transformers' default (dynamic) and its static-cache, compiled decode.
LLAVA_VARIANTS = (("", None), ("static cache", "static"))
ALONE_GROUP_OFFSET = 1  # components alone: the group after the TTFT breakdowns


def groma_bench(config, tok, base_vocab, args, device, dtype, clock) -> Bench:
    """Groma's units: generate per vision variant and batch size; at batch 1 the TTFT breakdown per variant, DINOv2
    alone and the LLM prefill alone (both eager, the same for both variants)."""
    model, build_s = build(GromaForConditionalGeneration, config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"Groma: {params / 1e9:.3f}B parameters, built in {build_s:.1f} s, attention: "
        f"{model.language_model.config._attn_implementation}",
        flush=True,
    )
    default = model.config.vision_cuda_graphs
    stats = roofline_stats(model.language_model, model.vision_model, config)

    def variant(graphs: bool, fn):
        # `perceive` reads config.vision_cuda_graphs at every call, so flipping it switches one model between graph
        # replay and eager vision; captured graphs stay cached while it is off (no recapture when it comes back).
        def run():
            model.config.vision_cuda_graphs = graphs
            try:
                return fn()
            finally:
                model.config.vision_cuda_graphs = default

        return run

    units, rows = [], {}
    inputs = {batch: groma_inputs(tok, base_vocab, config, batch, device) for batch in args.batch_sizes}
    selected = {}  # batch -> (regions per sample, attended prompt tokens per sample): the same in both variants
    for batch, inp in inputs.items():
        # eager, so that the graphs are captured inside the first warm-up generate (its memory rise counts)
        prepared = variant(
            False,
            lambda inp=inp: model.prepare_multimodal_inputs(
                inp["input_ids"], inp["pixel_values"], inp["attention_mask"]
            ),
        )()
        selected[batch] = ([len(b) for b in prepared.region_boxes], prepared.attention_mask.sum(1).tolist())
        del prepared
    for slot, (vision, graphs, cache, extra) in enumerate(GROMA_VARIANTS):
        for group, batch in enumerate(args.batch_sizes):
            name = f"groma/{vision}/b{batch}"
            run = lambda inp=inputs[batch], cache=cache, extra=extra: generate_once(
                model, inp, clock, args.new_tokens, device, cache, **extra
            )
            units.append(Unit(name, (group, slot), variant(graphs, run)))
            rows[name] = {
                "model": "Groma-7B shape" if not args.tiny else "Groma (tiny)",
                "vision": vision,
                "vision_mode": "cuda graphs" if graphs else "eager",
                "cache": cache or model.generation_config.cache_implementation or "dynamic",
                "stop_check": "per token" if extra.get("defer_stop_check") is False else "deferred on CUDA",  # asked
                "decoding_loop": "transformers" if extra.get("static_greedy") is False or cache else "groma greedy",
                "batch_size": batch,
                "visual_tokens": config.num_image_tokens + config.num_proxy_tokens,
                "image_tokens": config.num_image_tokens,
                "region_slots": config.num_proxy_tokens,
                "regions_selected": selected[batch][0],
                "prompt_tokens": inputs[batch]["input_ids"].shape[1],
                "attended_prompt_tokens": selected[batch][1],
                "parameters": params,
                "build_s": build_s,
                **stats,
            }
    if 1 in inputs:
        units += groma_batch1_units(model, inputs[1], clock, args, len(args.batch_sizes), variant)
    diagnose = lambda: groma_divergence(model, inputs, args.new_tokens, variant, args.tie_tolerance)
    return Bench(units, rows, resident_bytes(model), diagnose)


def groma_batch1_units(model, inputs: dict, clock: Clock, args, group: int, variant) -> list[Unit]:
    """Batch 1: DINOv2 forward alone and LLM prefill alone (the acceptance bound), and where TTFT goes."""
    px, ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    px_model = px.to(model.vision_model.embeddings.patch_embeddings.projection.weight.dtype)
    prepared = variant(False, lambda: model.prepare_multimodal_inputs(ids, px, mask))()  # eager: see groma_bench
    positions = (prepared.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def llm_prefill():  # what generate's first step runs: last-position logits, a fresh KV cache
        return model.language_model(
            inputs_embeds=prepared.inputs_embeds,
            attention_mask=prepared.attention_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )

    # Top-level stages (disjoint; `other` is TTFT minus these): the vision side (DINOv2 + projector + proposer +
    # region-encoder fusion: one CUDA-graph replay, or eager), region selection (threshold/NMS, host syncs), the
    # region encoder's box-dependent part, the LLM prefill. In the eager variant also the vision modules inside
    # `vision` (module hooks, which would make Groma skip its graphs, so only there).
    stages = {
        "vision": (model, "perceive"),
        "region_select": (model, "select_regions"),
        "region_extract": (model.region_encoder, "extract"),
        "llm_prefill": model.language_model,
    }
    eager_nested = {
        "dinov2": model.vision_model,
        "projector": model.multi_modal_projector,
        "proposer": model.region_proposer,
        "region_fuse": (model.region_encoder, "fuse"),
    }
    units = []
    for slot, (vision, graphs, *_) in enumerate(GROMA_VARIANTS[:2]):  # TTFT does not depend on the cache kind
        nested = {} if graphs else eager_nested
        run = lambda nested=nested: ttft_breakdown_once(model, inputs, stages, clock, nested)
        units.append(Unit(f"groma/{vision}/breakdown", (group, slot), variant(graphs, run)))
    calls = args.component_calls
    dinov2 = lambda: model.vision_model(px_model, output_hidden_states=True)
    units += [
        Unit(
            "groma/dinov2_alone",
            (group + ALONE_GROUP_OFFSET, 0),
            lambda: {"dinov2_alone_ms": time_call(clock, dinov2, calls)},
        ),
        Unit(
            "groma/llm_prefill_alone",
            (group + ALONE_GROUP_OFFSET, 1),
            lambda: {"llm_prefill_alone_ms": time_call(clock, llm_prefill, calls)},
        ),
    ]
    return units


def roofline_stats(llm: torch.nn.Module, vision: torch.nn.Module, config: GromaConfig) -> dict:
    """What the roofline goals need: bytes of LLM weights read per decoding step (every parameter but the input
    embedding, which is a gather), KV-cache bytes per token, and parameter counts for the prefill FLOPs."""
    embed = llm.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in llm.parameters() if p is not embed)
    text = llm.config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * embed.element_size()
    return {
        "llm_weight_bytes": weights,
        "llm_matmul_parameters": sum(p.numel() for p in llm.parameters() if p is not embed),
        "kv_bytes_per_token": kv_per_token,
        "llm_layers": text.num_hidden_layers,
        "llm_hidden": text.hidden_size,
        "vision_parameters": sum(p.numel() for p in vision.parameters()),
        "vision_tokens": config.patch_grid**2 + 1,  # DINOv2 patches at the input size + CLS
    }


def llava_row(args, config, inputs: dict, batch: int, params: int, build_s: float, cache: str | None) -> dict:
    return {
        "model": "LLaVA-1.5-7B shape" if not args.tiny else "LLaVA (tiny)",
        "cache": cache or "dynamic",
        "batch_size": batch,
        "visual_tokens": config.image_seq_length,
        "image_tokens": config.image_seq_length,
        "region_slots": 0,
        "regions_selected": None,
        "prompt_tokens": inputs["input_ids"].shape[1],
        "attended_prompt_tokens": inputs["attention_mask"].sum(1).tolist(),
        "parameters": params,
        "build_s": build_s,
    }


def llava_bench(config, tok, args, device, dtype, clock) -> Bench:
    """LLaVA's units: generate per batch size; at batch 1 the TTFT breakdown, CLIP alone and the LLM prefill alone."""
    model, build_s = build(LlavaForConditionalGeneration, config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(f"LLaVA: {params / 1e9:.3f}B parameters, built in {build_s:.1f} s", flush=True)
    slot = len(GROMA_VARIANTS)
    units, rows = [], {}
    inputs = {batch: llava_inputs(tok, config, batch, device, dtype) for batch in args.batch_sizes}
    for offset, (label, cache) in enumerate(LLAVA_VARIANTS):
        for group, batch in enumerate(args.batch_sizes):
            name = f"llava/{label}/b{batch}" if label else f"llava/b{batch}"
            run = lambda inp=inputs[batch], cache=cache: generate_once(
                model, inp, clock, args.new_tokens, device, cache
            )
            units.append(Unit(name, (group, slot + offset), run))
            rows[name] = llava_row(args, config, inputs[batch], batch, params, build_s, cache)
    if 1 in inputs:
        one, group, calls = inputs[1], len(args.batch_sizes), args.component_calls
        slot += len(LLAVA_VARIANTS) - 1
        embeds = model.get_input_embeddings()(one["input_ids"])
        clip = lambda: model.model.vision_tower(one["pixel_values"], output_hidden_states=True)
        prefill = lambda: model(
            inputs_embeds=embeds,
            attention_mask=one["attention_mask"],
            use_cache=True,
            logits_to_keep=1,
        )
        stages = {
            "clip": model.model.vision_tower,
            "projector": model.model.multi_modal_projector,
            "llm_prefill": model.model.language_model,
        }
        units += [
            Unit("llava/breakdown", (group, slot), lambda: ttft_breakdown_once(model, one, stages, clock)),
            # after Groma's two components in the same group
            Unit(
                "llava/clip_alone",
                (group + ALONE_GROUP_OFFSET, 2),
                lambda: {"clip_alone_ms": time_call(clock, clip, calls)},
            ),
            Unit(
                "llava/llm_prefill_alone",
                (group + ALONE_GROUP_OFFSET, 3),
                lambda: {"llm_prefill_alone_ms": time_call(clock, prefill, calls)},
            ),
        ]
    return Bench(units, rows, resident_bytes(model))


def partial_writer(args, kinds: list[str]) -> Callable[[dict], None] | None:
    """Writes `groma_speed_partial_<models>.json` (every unit's values so far) to the output folder after each
    round, so that a run stopped by a time limit still leaves what it measured; None without an output folder."""
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else args.out
    if out_dir is None:
        return None
    path = out_dir / f"groma_speed_partial_{'_'.join(kinds)}.json"

    def write(state: dict) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"commit": git_commit(), **state}, indent=1))

    return write


@torch.no_grad()
def measure(kinds: list[str], setup: dict, args) -> dict:
    """Build the models named in `kinds` (all resident at once), run their units in interleaved rounds, then each
    model's untimed diagnostic (the token divergence between Groma's paths), and return everything model-free:
    {"samples", "warm", "rows", "resident_bytes", "round", "divergence"}. The models die with this call."""
    benches = {kind: setup[kind]() for kind in kinds}
    units = [u for bench in benches.values() for u in bench.units]
    samples, warm, orders, wall = run_rounds(units, args.repeats, args.warmup, partial_writer(args, kinds))
    rows = {name: row for bench in benches.values() for name, row in bench.rows.items()}
    owner = {u.name: kind for kind, bench in benches.items() for u in bench.units}
    start = time.perf_counter()
    divergence = [entry for bench in benches.values() if bench.diagnose for entry in bench.diagnose()]
    for entry in divergence:  # did the scored generate reproduce the timed runs' tokens?
        timed = sorted({s["tokens"] for s in [*warm.get(entry["unit"], []), *samples.get(entry["unit"], [])]})
        entry["timed_tokens"] = timed
        entry["tokens_match_timed"] = timed == [entry["tokens"]]
    if divergence:
        print(f"token divergence: {len(divergence)} comparisons in {time.perf_counter() - start:.1f} s", flush=True)
    return {
        "samples": samples,
        "warm": warm,
        "rows": rows,
        "resident_bytes": {name: benches[owner[name]].resident_bytes for name in rows},
        "round": {"models": kinds, "warmup_rounds": args.warmup, "orders": orders, "wall_s": wall},
        "divergence": divergence,
    }


# ---------------------------------------------------------------------------------------------------- report
def result_row(row: dict, samples: list[dict], warm: list[dict], resident: int) -> dict:
    """A results row: medians over the repeats (with [min, max] and the per-repeat values of TTFT and decode speed);
    peak memory = the model's parameters and buffers + the largest rise of allocated memory during one of its
    generate runs, warm-ups included (so Groma's graph capture counts; the other model's weights do not)."""
    ttft = [s["ttft_ms"] for s in samples]
    decode = [s["decode_tokens_per_s"] for s in samples]
    rises = [s["memory_rise_bytes"] for s in [*warm, *samples] if s["memory_rise_bytes"] is not None]
    per_seq = statistics.median(decode)
    observed = {s.get("deferred_stop_check") for s in samples}
    stop_check = "deferred" if observed == {True} else "per token" if observed == {False} else "mixed"
    if row.get("decoding_loop") == "groma greedy":
        stop_check = "own loop: stop flag through pinned memory"  # transformers' stop checks are never built there
    return {
        **row,
        "stop_check_observed": stop_check,
        "ttft_ms": statistics.median(ttft),
        "decode_ms": statistics.median(s["decode_ms"] for s in samples),
        "decode_tokens_per_s": per_seq,
        "decode_tokens_per_s_total": per_seq * row["batch_size"],
        "peak_memory_gib": (resident + max(rises)) / 2**30 if rises else None,
        "ttft_ms_range": [min(ttft), max(ttft)],
        "decode_tokens_per_s_range": [min(decode), max(decode)],
        "repeats_ttft_ms": ttft,
        "repeats_decode_tokens_per_s": decode,
    }


# Batch-1 component tables: report key -> the units whose per-repeat dicts are merged (repeat r with repeat r).
COMPONENTS = {
    "groma_batch1_components": ("groma/dinov2_alone", "groma/llm_prefill_alone", "groma/cuda graphs/breakdown"),
    "groma_eager_batch1_components": ("groma/dinov2_alone", "groma/llm_prefill_alone", "groma/eager/breakdown"),
    "llava_batch1_components": ("llava/clip_alone", "llava/llm_prefill_alone", "llava/breakdown"),
}


def components(samples: dict, units: tuple[str, ...]) -> tuple[dict, dict]:
    """(medians {metric: ms}, ranges {metric: [min, max]}) over the repeats; empty if the units did not run."""
    if not all(name in samples for name in units):
        return {}, {}
    per_repeat = [{k: v for name in units for k, v in samples[name][r].items()} for r in range(len(samples[units[0]]))]
    stats = {key: spread([rep[key] for rep in per_repeat]) for key in per_repeat[0]}
    return {k: s["median"] for k, s in stats.items()}, {k: [s["min"], s["max"]] for k, s in stats.items()}


def check(ratios: list[float], limit: float, at_most: bool, paired: bool) -> dict:
    """PASS/FAIL on the median of the per-repeat ratios; their range says how firmly."""
    ratio = statistics.median(ratios)
    return {
        "ratio": ratio,
        "limit": limit,
        "pass": ratio <= limit if at_most else ratio >= limit,
        "range": [min(ratios), max(ratios)],
        "per_repeat": ratios,
        "paired": paired,
    }


def acceptance(samples: dict, paired: bool) -> dict:
    """Per Groma variant: batch-1 TTFT <= 1.5 x (DINOv2 alone + LLM prefill alone), and decode >= 0.97 x LLaVA's per
    batch size, each ratio formed within one repeat (`paired`: the units ran in the same round; with --sequential
    repeat r of Groma meets repeat r of LLaVA, minutes apart). The default variant's checks keep the plain names."""
    checks = {}
    for vision, *_ in GROMA_VARIANTS[:2]:
        suffix = "" if vision == GROMA_VARIANTS[0][0] else f"_{vision.replace(' ', '_')}_vision"
        ttft = samples.get(f"groma/{vision}/b1")
        if ttft and "groma/dinov2_alone" in samples:
            bound = [
                d["dinov2_alone_ms"] + p["llm_prefill_alone_ms"]
                for d, p in zip(samples["groma/dinov2_alone"], samples["groma/llm_prefill_alone"])
            ]
            ratios = [s["ttft_ms"] / b for s, b in zip(ttft, bound)]
            checks[f"groma_b1_ttft_over_dinov2_plus_llm_prefill{suffix}"] = check(ratios, 1.5, True, True)
        for name in sorted(
            (n for n in samples if n.startswith(f"groma/{vision}/b") and n[-1].isdigit()),
            key=lambda n: int(n.rsplit("/b", 1)[1]),
        ):
            batch = name.rsplit("/b", 1)[1]
            if f"llava/b{batch}" in samples:
                ratios = [
                    g["decode_tokens_per_s"] / l["decode_tokens_per_s"]
                    for g, l in zip(samples[name], samples[f"llava/b{batch}"])
                ]
                checks[f"groma_over_llava_decode_b{batch}{suffix}"] = check(ratios, 0.97, False, paired)
    return checks


# (substring of torch.cuda.get_device_name, HBM bytes/s, dense bf16 tensor FLOP/s), first match wins (vendor specs).
DEVICE_SPECS = (
    ("H200", 4.8e12, 989e12),
    ("H100 NVL", 3.9e12, 835e12),
    ("H100 PCIe", 2.0e12, 756e12),
    ("H100", 3.35e12, 989e12),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("A100", 2.0e12, 312e12),
)


def device_specs(name: str) -> tuple[float, float] | None:
    return next(((bw, flops) for key, bw, flops in DEVICE_SPECS if key in name), None)


def hardware_goals(results: list[dict], samples: dict, device: str, new_tokens: int) -> dict:
    """The goals measured against the hardware, for Groma's default path (vision graphs + static cache):
    - decode at batch 1 >= 70 % of the HBM roofline: bandwidth / (LLM weight bytes + KV bytes of the mean context);
    - decode >= 1,200 tokens/s in all at batch 8 and >= 3,000 at batch 32;
    - TTFT at batch 1 <= 1.2 x (DINOv2 alone + LLM prefill alone), the ratio paired per repeat;
    - TTFT at batch 8 <= 2 x its compute-bound estimate: (2 x LLM matmul parameters x attended prompt tokens
      + 4 x layers x hidden x sum of squared prompt lengths (QK^T and PV) + 2 x DINOv2 parameters x patch tokens x
      batch) / the dense bf16 peak;
    - peak memory at batch 8 <= 18 GiB;
    - the default's greedy tokens equal to the dynamic-cache and eager-vision variants' (first timed repeat).
    Goals whose inputs did not run (batch size not measured, unknown device) are left out."""
    default = {r["batch_size"]: r for r in results if r.get("vision") == GROMA_VARIANTS[0][0]}
    specs = device_specs(device)
    goals = {}

    def goal(name, value, limit, at_most, note=""):
        goals[name] = {
            "value": value,
            "limit": limit,
            "at_most": at_most,
            "pass": value <= limit if at_most else value >= limit,
        }
        if note:
            goals[name]["note"] = note

    if specs and 1 in default:
        r = default[1]
        context = statistics.mean(r["attended_prompt_tokens"]) + new_tokens / 2
        roof = specs[0] / (r["llm_weight_bytes"] + r["kv_bytes_per_token"] * context)
        r["hbm_roofline_tokens_per_s"] = roof
        goal(
            "groma_b1_decode_fraction_of_hbm_roofline",
            r["decode_tokens_per_s"] / roof,
            0.70,
            False,
            f"roofline {roof:.0f} tok/s",
        )
    for batch, limit in ((8, 1200.0), (32, 3000.0)):
        if batch in default:
            goal(f"groma_b{batch}_decode_tokens_per_s_total", default[batch]["decode_tokens_per_s_total"], limit, False)
    ttft = samples.get(f"groma/{GROMA_VARIANTS[0][0]}/b1")
    if ttft and "groma/dinov2_alone" in samples:
        ratios = [
            s["ttft_ms"] / (d["dinov2_alone_ms"] + p["llm_prefill_alone_ms"])
            for s, d, p in zip(ttft, samples["groma/dinov2_alone"], samples["groma/llm_prefill_alone"])
        ]
        goal(
            "groma_b1_ttft_over_dinov2_plus_llm_prefill_goal",
            statistics.median(ratios),
            1.2,
            True,
            f"per-repeat range {min(ratios):.3f}-{max(ratios):.3f}",
        )
    if specs and 8 in default:
        r = default[8]
        lengths = r["attended_prompt_tokens"]
        flops = (
            2 * r["llm_matmul_parameters"] * sum(lengths)
            + 4 * r["llm_layers"] * r["llm_hidden"] * sum(n * n for n in lengths)
            + 2 * r["vision_parameters"] * r["vision_tokens"] * r["batch_size"]
        )
        estimate_ms = flops / specs[1] * 1e3
        goal(
            "groma_b8_ttft_over_compute_bound",
            r["ttft_ms"] / estimate_ms,
            2.0,
            True,
            f"compute-bound estimate {estimate_ms:.1f} ms ({flops / 1e12:.1f} TFLOP)",
        )
    if 8 in default and default[8]["peak_memory_gib"] is not None:
        goal("groma_b8_peak_memory_gib", default[8]["peak_memory_gib"], 18.0, True)
    for batch in default:
        base = samples.get(f"groma/{GROMA_VARIANTS[0][0]}/b{batch}")
        for vision, *_ in GROMA_VARIANTS[1:]:
            other = samples.get(f"groma/{vision}/b{batch}")
            if base and other:
                same = float(base[0]["tokens"] == other[0]["tokens"])
                goal(f"groma_b{batch}_tokens_equal_to_{vision.replace(' ', '_')}", same, 1.0, False)
    return goals


def markdown(report: dict) -> str:
    meta = report["meta"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    span = lambda r, spec: "n/a" if r is None else f"{r[0]:{spec}}–{r[1]:{spec}}"
    how = (
        "interleaved: both models resident, each repeat one round over all units in a rotated order"
        if meta["mode"] == "interleaved"
        else "sequential: one model at a time"
    )
    lines = [
        f"Device: {meta['device']} · torch {meta['torch']} · transformers {meta['transformers']} · "
        f"{meta['dtype']} · {meta['date']} · commit {meta['git_commit']}",
        f"Command: `{meta['command']}` (median of {meta['repeats']} repeats after {meta['warmup']} warm-up rounds; "
        f"{how}; {meta['new_tokens']} new tokens; wall {meta['wall_s']:.0f} s)",
        "",
    ]
    parts = [report[key] for key in COMPONENTS]
    ranges = [report["batch1_component_ranges"][key] for key in COMPONENTS]
    if any(parts):
        lines += [
            "Batch 1, ms: each part alone, and inside TTFT (stage boundaries on the device timeline; `vision` = "
            "DINOv2 + projector + proposer + region-encoder fusion, one CUDA-graph replay by default; the "
            "indented parts are inside it, measured in the eager-vision units only). Medians, then min–max over "
            "the repeats.",
            "",
            "| part | Groma | Groma, eager vision | LLaVA | Groma min–max | eager min–max | LLaVA min–max |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        names = [
            "dinov2_alone",
            "clip_alone",
            "llm_prefill_alone",
            "in_ttft_vision",
            "in_ttft_dinov2",
            "in_ttft_projector",
            "in_ttft_proposer",
            "in_ttft_region_fuse",
            "in_ttft_clip",
            "in_ttft_region_select",
            "in_ttft_region_extract",
            "in_ttft_llm_prefill",
            "in_ttft_other",
            "in_ttft_ttft",
        ]
        inner = {"in_ttft_dinov2", "in_ttft_projector", "in_ttft_proposer", "in_ttft_region_fuse"}
        for name in names:
            values = [part.get(f"{name}_ms") for part in parts]
            if any(v is not None for v in values):
                label = f"· {name}" if name in inner else name
                cells = [fmt(v, ".2f") for v in values] + [span(r.get(f"{name}_ms"), ".2f") for r in ranges]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += [""]
    if meta["tiny"]:
        lines.append("Tiny CPU configs: a smoke run; the acceptance ratios below say nothing about the 7B shapes.")
    for name, c in report["acceptance"].items():
        op = "<=" if c["limit"] == 1.5 else ">="
        pairing = "paired" if c["paired"] else "unpaired (--sequential)"
        lines.append(
            f"- {name}: {c['ratio']:.3f} {op} {c['limit']} -> {'PASS' if c['pass'] else 'FAIL'} (median of "
            f"{len(c['per_repeat'])} {pairing} per-repeat ratios, range {c['range'][0]:.3f}–{c['range'][1]:.3f})"
        )
    if report.get("goals"):
        lines += [
            "",
            "Goals against the hardware (Groma's default path: vision graphs + static KV cache + deferred stop check):",
        ]
        for name, g in report["goals"].items():
            op = "<=" if g["at_most"] else ">="
            note = f" ({g['note']})" if g.get("note") else ""
            lines.append(f"- {name}: {g['value']:.3f} {op} {g['limit']} -> {'PASS' if g['pass'] else 'FAIL'}{note}")
    lines += divergence_markdown(report["token_divergence"])
    lines += [
        "",
        "| model | batch | visual tokens | prompt tokens | TTFT ms | decode tok/s per seq | decode tok/s total "
        "| peak mem GiB | TTFT ms min–max | decode tok/s per seq min–max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        visual = str(r["visual_tokens"])
        if r["region_slots"]:
            regions = r["regions_selected"]
            visual = f"{r['image_tokens']} + {r['region_slots']} slots ({min(regions)}-{max(regions)} regions used)"
        model = f"{r['model']}, {r['vision_mode']} vision" if "vision" in r else r["model"]
        model += f", {r['cache']} cache"
        if r.get("decoding_loop") == "groma greedy":
            model += ", Groma's greedy loop"  # its own stop check, never blocking: nothing more to say
        else:
            if "vision" in r:
                model += ", transformers' loop"
            if r.get("stop_check_observed") == "deferred":
                model += ", deferred stop check"
            elif r.get("stop_check") == "per token":
                model += ", per-token stop check"
        lines.append(
            f"| {model} | {r['batch_size']} | {visual} | {r['prompt_tokens']} | {r['ttft_ms']:.1f} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s_total']:.1f} | {fmt(r['peak_memory_gib'], '.2f')} | "
            f"{span(r['ttft_ms_range'], '.1f')} | {span(r['decode_tokens_per_s_range'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def divergence_markdown(div: dict) -> list[str]:
    """The token-divergence section: one line per (Groma path, batch size); nothing if no Groma ran."""
    if not div["entries"]:
        return []
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    lines = [
        "",
        f"Greedy-token divergence from the reference path ({div['reference']}: no CUDA graphs, no compiled decoding "
        f"step), one untimed generate with scores per path and batch size. Step 0 = the first generated token; "
        f"margin = the reference's top-1 minus top-2 score at a row's first differing step; tie-flip = the reference "
        f"scored the other path's token within {div['tie_tolerance']} of its own (rounding noise on near-flat "
        f"logits), real = further apart; noise = the largest |score difference| between the paths on the steps "
        f"before (same prefix). Tokens = timed: this generate reproduced the timed runs' tokens.",
        "",
        "| path | batch | rows identical | median first step | first step | max margin | other = ref top-2 "
        "| tie-flips | real | noise before | max image-embeds diff | tokens = timed | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for e in div["entries"]:
        diverged = e["rows"] - e["identical_rows"]
        image = max(r["max_image_embeds_abs_diff"] for r in e["per_row"])
        lines.append(
            f"| {e['path']} | {e['batch_size']} | {e['identical_rows']}/{e['rows']} | "
            f"{fmt(e['median_first_divergence_step'], 'g')} | {fmt(e['min_first_divergence_step'], 'd')} | "
            f"{fmt(e['max_ref_margin_at_divergence'], '.4g')} | {e['other_is_ref_top2_rows']}/{diverged} | "
            f"{e['tie_flips']} | {e['real_divergences']} | {fmt(e['max_abs_score_diff_before_divergence'], '.3g')} | "
            f"{image:.3g} | {'yes' if e['tokens_match_timed'] else 'no'} | {e['verdict']} |"
        )
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU in fp32 (a smoke run, seconds)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds; each metric's median and ratio over them")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds over all units first")
    parser.add_argument(
        "--component-calls",
        type=int,
        default=3,
        help="calls per repeat of a component timed alone (DINOv2, CLIP, LLM prefill); their median",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="one model at a time (build, measure, free): for GPUs that cannot hold both",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT if set, else none)")
    parser.add_argument("--models", nargs="+", choices=("groma", "llava"), default=["groma", "llava"])
    parser.add_argument(
        "--tie-tolerance",
        type=float,
        default=TIE_TOLERANCE,
        help="token divergence: a flip where the reference scored the other path's token within this of its own "
        "top-1 counts as a tie-flip (rounding noise), above it as a real divergence",
    )
    args = parser.parse_args(argv)
    if (
        args.new_tokens < 2
        or args.repeats < 1
        or args.warmup < 0
        or args.component_calls < 1
        or min(args.batch_sizes) < 1
        or not args.tie_tolerance >= 0
    ):
        parser.error(
            "need --new-tokens >= 2, --repeats >= 1, --warmup >= 0, --component-calls >= 1, positive batch sizes "
            "and --tie-tolerance >= 0"
        )
    if len(set(args.batch_sizes)) != len(args.batch_sizes):
        parser.error(f"--batch-sizes must not repeat a size: {args.batch_sizes}")
    args.models = [m for m in ("groma", "llava") if m in args.models]  # fixed order, no duplicates
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("the 7B-shape benchmark needs a CUDA GPU; use --tiny for a CPU smoke run")
        device, dtype = torch.device("cuda"), torch.bfloat16
    clock = Clock(device)
    tok, base_vocab = toy_tokenizer()
    if args.tiny:
        groma_config, llava_config = tiny_configs(tok, base_vocab)
    else:
        groma_config, llava_config = GromaConfig(), llava_7b_config()
    setup = {
        "groma": lambda: groma_bench(groma_config, tok, base_vocab, args, device, dtype, clock),
        "llava": lambda: llava_bench(llava_config, tok, args, device, dtype, clock),
    }

    start = time.perf_counter()
    runs = []
    for kinds in [[m] for m in args.models] if args.sequential else [args.models]:
        runs.append(measure(kinds, setup, args))
        release(device)  # the models of this call are gone: give their memory back before the next build
    samples = {name: s for run in runs for name, s in run["samples"].items()}
    results = [
        result_row(row, run["samples"][name], run["warm"][name], run["resident_bytes"][name])
        for run in runs
        for name, row in run["rows"].items()
    ]
    for row in results:
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("repeats_")}), flush=True)
    parts = {key: components(samples, units) for key, units in COMPONENTS.items()}

    report = {
        "meta": {
            **run_meta("benchmarks/groma_speed.py", argv, device, dtype),
            "batch_sizes": args.batch_sizes,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "component_calls": args.component_calls,
            "tiny": args.tiny,
            "mode": "sequential" if args.sequential else "interleaved",
            "wall_s": time.perf_counter() - start,
            "prompt_note": "toy Llama-style tokenizer on the Groma template (about one token per word); Groma's "
            "added tokens remapped to ids 32000+k; LLaVA: 'USER: <image>\\n{question} ASSISTANT:'",
            "memory_note": "peak_memory_gib = the model's parameters and buffers + the largest rise of allocated "
            "memory during one of its generate runs (warm-ups included)",
        },
        "results": results,
        **{key: medians for key, (medians, _) in parts.items()},
        "batch1_component_ranges": {key: ranges for key, (_, ranges) in parts.items()},
        "acceptance": acceptance(samples, paired=not args.sequential),
        "goals": hardware_goals(
            results,
            samples,
            torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            args.new_tokens,
        ),
        "token_divergence": {
            "reference": GROMA_REFERENCE[0],
            "reference_vision_cuda_graphs": GROMA_REFERENCE[1],
            "reference_cache": GROMA_REFERENCE[2],
            "tie_tolerance": args.tie_tolerance,
            "note": "one untimed greedy generate per path and batch size with output_scores; step 0 = the first "
            "generated token; margin = the reference's top-1 minus top-2 score at the first differing step; "
            "tie-flip = the reference scored the other path's token within tie_tolerance of its own",
            "entries": [entry for run in runs for entry in run["divergence"]],
        },
        "rounds": [run["round"] for run in runs],
        "samples": samples,
    }
    write_report("groma_speed", report, markdown(report), args.out)
    return report


def run_meta(script: str, argv: list[str] | None, device: torch.device, dtype: torch.dtype) -> dict:
    """Device, versions, dtype, date, commit and command line of a benchmark run (the report's provenance)."""
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "command": " ".join([f"python {script}", *(argv if argv is not None else sys.argv[1:])]),
    }


def write_report(name: str, report: dict, text: str, out: Path | None) -> None:
    """Print the markdown and write `<name>.json` + `<name>.md` to $OUT (the device tool's folder) or `out`."""
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else out
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2))
        (out_dir / f"{name}.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
