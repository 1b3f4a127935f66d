"""Groma-7B shape vs LLaVA-1.5-7B shape: visual tokens, TTFT, decode tokens/s and peak memory, batch 1 and 8.

Both models are built with random weights directly on the GPU in bf16 (one at a time: build, measure, delete),
so no checkpoint is needed. Measured with CUDA events after warm-up, median of `--repeats` runs:

- TTFT: `model.generate(...)` from input tensors on the device to the first token's logits (vision side, Groma's
  proposer/region selection/region encoder, LLM prefill and generate's own setup all included);
- decode tokens/s: `--new-tokens` greedy tokens with the KV cache (`min_new_tokens` forces the length); the
  (new_tokens - 1) decoding steps after the first token, per sequence and for the whole batch;
- peak memory: `torch.cuda.max_memory_allocated` over those runs (weights included), reset per model and batch;
- Groma, batch 1, in the same run: its DINOv2 forward alone (eager) and its LLM prefill alone, where TTFT goes (the
  vision side, region selection, the region encoder's box-dependent part, the LLM prefill, the rest), with the
  acceptance checks TTFT <= 1.5 x (DINOv2 + LLM prefill) and decode >= 0.97 x LLaVA's;
- Groma twice, same weights: the default (`vision_cuda_graphs=True`: the vision side replays a CUDA graph) and
  with `vision_cuda_graphs=False` (everything eager), so the graphs' effect is measured; acceptance for both.

Prompts: there is no Llama tokenizer offline, so a toy Llama-style tokenizer (groundvlm.recipes.toy_tokenizers,
`<unk> <s> </s>` = 0 1 2, trained on the prompt text, so about one token per word) gets Groma's 114 tokens with
`add_groma_tokens`, and `GromaProcessor` builds the real Groma template (system prompt, fixed first turn with 256
`<image>` slots and 100 `<r_j><region>` pairs, a grounding question) on images of common sizes. The added tokens are
then remapped onto the 7B vocabulary (toy base vocabulary + k -> 32000 + k); base ids stay (they are valid 7B ids).
LLaVA gets `USER: <image>\\n{same question without Groma markup} ASSISTANT:` with 576 image tokens (id 32000).

Usage (repo root): `python benchmarks/groma_speed.py` (GPU) or `python benchmarks/groma_speed.py --tiny` (CPU, tiny
configs, seconds). Writes groma_speed.json and groma_speed.md to $OUT if set, else to `--out` if given.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import LlavaConfig, LlavaForConditionalGeneration, LogitsProcessor, LogitsProcessorList

ROOT = Path(__file__).resolve().parents[1]
try:
    import groundvlm.modeling  # noqa: F401
except ImportError:  # a bare checkout (e.g. the GPU machine): map the namespace onto it, as pyproject's package-dir
    _pkg = types.ModuleType("groundvlm")
    _pkg.__path__ = [str(ROOT)]
    sys.modules["groundvlm"] = _pkg

from groundvlm.modeling import GromaConfig, GromaForConditionalGeneration  # noqa: E402
from groundvlm.processing import GromaImageProcessor, GromaProcessor, add_groma_tokens, build_groma_prompt  # noqa: E402
from groundvlm.processing.processing_groma import FIRST_ASSISTANT_TURN, FIRST_USER_TURN, SYSTEM_PROMPT  # noqa: E402
from groundvlm.recipes.toy_tokenizers import train_tokenizer  # noqa: E402

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
            model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
            num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
        ),
        text_config=dict(
            model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
            rms_norm_eps=1e-5, pad_token_id=32001, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        ),
        image_token_index=32000, image_seq_length=576, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=False,
    )  # fmt: skip


def tiny_configs(base_vocab: int) -> tuple[GromaConfig, LlavaConfig]:
    """CPU-sized stand-ins with the same structure (112 px, 16 image tokens; LLaVA: 64 image tokens)."""
    text = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    groma = GromaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=518, patch_size=14),
        text_config=dict(text, vocab_size=base_vocab + 114, pad_token_id=base_vocab),
        image_size=112, proposer_d_model=32, proposer_encoder_layers=2, proposer_decoder_layers=2,
        proposer_attention_heads=4, proposer_ffn_dim=64, proposer_num_queries=20, region_gn_groups=4,
        region_pos_embed_dim=16, pad_token_id=base_vocab, image_token_id=base_vocab + 8,
        region_token_id=base_vocab + 9, refer_box_token_id=base_vocab + 10, ground_box_token_id=base_vocab + 11,
        refer_feat_token_id=base_vocab + 12, proxy_token_start_id=base_vocab + 14,
    )  # fmt: skip
    llava = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=112, patch_size=14, projection_dim=32),
        text_config=dict(text, vocab_size=base_vocab + 64, pad_token_id=base_vocab + 1),
        image_token_index=base_vocab, image_seq_length=64, vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=False,
    )  # fmt: skip
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
    processor = GromaProcessor(GromaImageProcessor(size={"height": size, "width": size}), tok,
                               num_image_tokens=config.num_image_tokens, num_proxy_tokens=config.num_proxy_tokens)
    texts = [build_groma_prompt(QUESTIONS[i % len(QUESTIONS)]) for i in range(batch)]
    images = [noise_image(*IMAGE_SIZES[i % len(IMAGE_SIZES)], seed=i) for i in range(batch)]
    out = processor(images=images, text=texts)
    ids = out["input_ids"]
    ids = torch.where(ids >= base_vocab, ids - base_vocab + config.pad_token_id, ids)
    if not (((ids == config.image_token_id).sum(1) == config.num_image_tokens).all()
            and ((ids == config.region_token_id).sum(1) == config.num_proxy_tokens).all()):  # fmt: skip
        raise RuntimeError("the remapped prompt does not hold the config's <image>/<region> slots; check the token ids")
    return {"input_ids": ids.to(device), "attention_mask": out["attention_mask"].to(device),
            "pixel_values": out["pixel_values"].to(device)}  # fmt: skip


def llava_inputs(tok, config: LlavaConfig, batch: int, device, dtype) -> dict:
    """`USER: <image>\\n{question} ASSISTANT:` with `image_seq_length` image tokens, left-padded."""
    rows = []
    for i in range(batch):
        before, after = LLAVA_TEMPLATE.format(question=strip_groma_markup(QUESTIONS[i % len(QUESTIONS)])).split("<image>")
        rows.append(tok(before)["input_ids"] + [config.image_token_index] * config.image_seq_length
                    + tok(after, add_special_tokens=False)["input_ids"])  # fmt: skip
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


def time_call(clock: Clock, fn, repeats: int, warmup: int) -> float:
    """Median ms of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        clock.sync()
        start = clock.mark()
        fn()
        end = clock.mark()
        clock.sync()
        times.append(clock.ms(start, end))
    return statistics.median(times)


def measure_generate(model, inputs: dict, clock: Clock, new_tokens: int, repeats: int, warmup: int) -> dict:
    """Median TTFT (ms) and decode speed of greedy generation of exactly `new_tokens` tokens."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True)
    for _ in range(warmup):
        model.generate(**inputs, **kwargs)
    ttft, decode = [], []
    for _ in range(repeats):
        marker = FirstLogitsMark(clock)
        clock.sync()
        start = clock.mark()
        out = model.generate(**inputs, logits_processor=LogitsProcessorList([marker]), **kwargs)
        end = clock.mark()
        clock.sync()
        generated = out.shape[1] - inputs["input_ids"].shape[1]
        if generated != new_tokens:
            raise RuntimeError(f"generated {generated} tokens instead of {new_tokens}")
        ttft.append(clock.ms(start, marker.first))
        decode.append(clock.ms(marker.first, end))
    batch = inputs["input_ids"].shape[0]
    per_seq = (new_tokens - 1) / (statistics.median(decode) / 1e3)
    return {"ttft_ms": statistics.median(ttft), "decode_ms": statistics.median(decode),
            "decode_tokens_per_s": per_seq, "decode_tokens_per_s_total": per_seq * batch}  # fmt: skip


def ttft_breakdown(model, inputs: dict, modules: dict, clock: Clock, repeats: int, warmup: int,
                   nested: dict | None = None) -> dict:
    """Median ms of each named stage's first call inside `generate(max_new_tokens=1)`, plus `other` (generate's
    setup, embeddings, host syncs: TTFT minus the named stages, which must not overlap) and that run's `ttft`.
    `nested` stages (inside one of `modules`) are reported too, but not subtracted."""
    nested = nested or {}
    kwargs = dict(max_new_tokens=1, do_sample=False, use_cache=True)
    for _ in range(warmup):
        model.generate(**inputs, **kwargs)
    runs = []
    for _ in range(repeats):
        stages, marker = StageMarks(clock, {**modules, **nested}), FirstLogitsMark(clock)
        clock.sync()
        start = clock.mark()
        try:
            model.generate(**inputs, logits_processor=LogitsProcessorList([marker]), **kwargs)
        finally:
            stages.remove()
        clock.sync()
        run = {name: clock.ms(a, b) for name, (a, b) in stages.marks.items()}
        run["ttft"] = clock.ms(start, marker.first)
        run["other"] = run["ttft"] - sum(run[name] for name in modules)
        runs.append(run)
    return {f"{name}_ms": statistics.median(r[name] for r in runs) for name in [*modules, *nested, "other", "ttft"]}


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


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free(model, device):
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# Groma rows: the default (vision CUDA graphs on; eager off CUDA) and the same model with an eager vision side.
GROMA_VARIANTS = (("cuda graphs", True), ("eager", False))


@torch.no_grad()
def run_groma(config, tok, base_vocab, args, device, dtype, clock) -> tuple[list[dict], dict]:
    model, build_s = build(GromaForConditionalGeneration, config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(f"Groma: {params / 1e9:.3f}B parameters, built in {build_s:.1f} s, attention: "
          f"{model.language_model.config._attn_implementation}", flush=True)  # fmt: skip
    rows, components = [], {}
    for vision, graphs in GROMA_VARIANTS:
        model.config.vision_cuda_graphs = graphs
        model.reset_cuda_graphs()  # each variant starts without captured graphs (and their memory)
        for batch in args.batch_sizes:
            inputs = groma_inputs(tok, base_vocab, config, batch, device)
            if batch == 1:
                components[vision] = groma_components(model, inputs, clock, args)
            reset_peak(device)
            speed = measure_generate(model, inputs, clock, args.new_tokens, args.repeats, args.warmup)
            speed["peak_memory_gib"] = peak_gib(device)
            rows.append(groma_row(model, config, inputs, args, speed, vision, params, build_s))
            print(json.dumps(rows[-1]), flush=True)
    model.config.vision_cuda_graphs = True
    free(model, device)
    return rows, components


def groma_row(model, config, inputs, args, speed, vision, params, build_s) -> dict:
    prepared = model.prepare_multimodal_inputs(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    return {
        "model": "Groma-7B shape" if not args.tiny else "Groma (tiny)", "vision": vision,
        "batch_size": inputs["input_ids"].shape[0], "visual_tokens": config.num_image_tokens + config.num_proxy_tokens,
        "image_tokens": config.num_image_tokens, "region_slots": config.num_proxy_tokens,
        "regions_selected": [len(b) for b in prepared.region_boxes], "prompt_tokens": inputs["input_ids"].shape[1],
        "attended_prompt_tokens": prepared.attention_mask.sum(1).tolist(), **speed, "parameters": params,
        "build_s": build_s,
    }  # fmt: skip


def groma_components(model, inputs: dict, clock: Clock, args) -> dict:
    """Batch 1: DINOv2 forward alone and LLM prefill alone (the acceptance bound), and where TTFT goes."""
    px, ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    px_model = px.to(model.vision_model.embeddings.patch_embeddings.projection.weight.dtype)
    prepared = model.prepare_multimodal_inputs(ids, px, mask)
    positions = (prepared.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def llm_prefill():  # what generate's first step runs: last-position logits, a fresh KV cache
        return model.language_model(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask,
                                    position_ids=positions, use_cache=True, logits_to_keep=1)  # fmt: skip

    alone = {
        "dinov2_alone_ms": time_call(clock, lambda: model.vision_model(px_model, output_hidden_states=True),
                                     args.repeats, args.warmup),
        "llm_prefill_alone_ms": time_call(clock, llm_prefill, args.repeats, args.warmup),
    }  # fmt: skip
    # Top-level stages (disjoint; `other` is TTFT minus these): the vision side (DINOv2 + projector + proposer +
    # region-encoder fusion: one CUDA-graph replay, or eager), region selection (threshold/NMS, host syncs), the
    # region encoder's box-dependent part, the LLM prefill. In eager mode also the vision modules inside `vision`
    # (module hooks, which would make Groma skip its graphs, so only there).
    stages = {"vision": (model, "perceive"), "region_select": (model, "select_regions"),
              "region_extract": (model.region_encoder, "extract"), "llm_prefill": model.language_model}  # fmt: skip
    nested = {}
    if not model.config.vision_cuda_graphs:
        nested = {"dinov2": model.vision_model, "projector": model.multi_modal_projector,
                  "proposer": model.region_proposer, "region_fuse": (model.region_encoder, "fuse")}  # fmt: skip
    inside = ttft_breakdown(model, inputs, stages, clock, args.repeats, args.warmup, nested)
    return {**alone, **{f"in_ttft_{k}": v for k, v in inside.items()}}


def llava_components(model, inputs: dict, clock: Clock, args) -> dict:
    """Batch 1: CLIP forward alone, LLM prefill alone, and where TTFT goes."""
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    alone = {
        "clip_alone_ms": time_call(clock, lambda: model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True),
                                   args.repeats, args.warmup),
        "llm_prefill_alone_ms": time_call(clock, lambda: model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                                               use_cache=True, logits_to_keep=1), args.repeats, args.warmup),
    }  # fmt: skip
    stages = {"clip": model.model.vision_tower, "projector": model.model.multi_modal_projector,
              "llm_prefill": model.model.language_model}  # fmt: skip
    inside = ttft_breakdown(model, inputs, stages, clock, args.repeats, args.warmup)
    return {**alone, **{f"in_ttft_{k}": v for k, v in inside.items()}}


@torch.no_grad()
def run_llava(config, tok, args, device, dtype, clock) -> tuple[list[dict], dict]:
    model, build_s = build(LlavaForConditionalGeneration, config, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    print(f"LLaVA: {params / 1e9:.3f}B parameters, built in {build_s:.1f} s", flush=True)
    rows, components = [], {}
    for batch in args.batch_sizes:
        inputs = llava_inputs(tok, config, batch, device, dtype)
        if batch == 1:
            components = llava_components(model, inputs, clock, args)
        reset_peak(device)
        speed = measure_generate(model, inputs, clock, args.new_tokens, args.repeats, args.warmup)
        rows.append({
            "model": "LLaVA-1.5-7B shape" if not args.tiny else "LLaVA (tiny)", "batch_size": batch,
            "visual_tokens": config.image_seq_length, "image_tokens": config.image_seq_length, "region_slots": 0,
            "regions_selected": None, "prompt_tokens": inputs["input_ids"].shape[1],
            "attended_prompt_tokens": inputs["attention_mask"].sum(1).tolist(), **speed,
            "peak_memory_gib": peak_gib(device), "parameters": params, "build_s": build_s,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    free(model, device)
    return rows, components


# ---------------------------------------------------------------------------------------------------- report
def git_commit() -> str | None:
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def acceptance(results: list[dict], groma_parts: dict) -> dict:
    """Per Groma variant (`groma_parts`: vision -> its batch-1 components): TTFT <= 1.5 x (DINOv2 alone + LLM prefill
    alone), and decode >= 0.97 x LLaVA's per batch size. The default variant's checks keep the plain names."""
    llava = {r["batch_size"]: r for r in results if r["model"].startswith("LLaVA")}
    checks = {}
    for vision, parts in groma_parts.items():
        suffix = "" if vision == GROMA_VARIANTS[0][0] else f"_{vision.replace(' ', '_')}_vision"
        groma = {r["batch_size"]: r for r in results if r["model"].startswith("Groma") and r["vision"] == vision}
        if 1 in groma and parts:
            ratio = groma[1]["ttft_ms"] / (parts["dinov2_alone_ms"] + parts["llm_prefill_alone_ms"])
            checks[f"groma_b1_ttft_over_dinov2_plus_llm_prefill{suffix}"] = {
                "ratio": ratio, "limit": 1.5, "pass": ratio <= 1.5,
            }  # fmt: skip
        for batch, row in sorted(groma.items()):
            if batch in llava:
                ratio = row["decode_tokens_per_s"] / llava[batch]["decode_tokens_per_s"]
                checks[f"groma_over_llava_decode_b{batch}{suffix}"] = {"ratio": ratio, "limit": 0.97, "pass": ratio >= 0.97}
    return checks


def markdown(report: dict) -> str:
    meta = report["meta"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"Device: {meta['device']} · torch {meta['torch']} · transformers {meta['transformers']} · "
        f"{meta['dtype']} · {meta['date']} · commit {meta['git_commit']}",
        f"Command: `{meta['command']}` (median of {meta['repeats']} after {meta['warmup']} warm-up; "
        f"{meta['new_tokens']} new tokens)",
        "",
    ]
    groma, eager = report["groma_batch1_components"], report["groma_eager_batch1_components"]
    llava = report["llava_batch1_components"]
    if groma or eager or llava:
        lines += ["Batch 1, ms: each part alone, and inside TTFT (stage boundaries on the device timeline; `vision` = "
                  "DINOv2 + projector + proposer + region-encoder fusion, one CUDA-graph replay by default; the "
                  "indented parts are inside it, measured in the eager-vision run only).", "",
                  "| part | Groma | Groma, eager vision | LLaVA |", "|---|---:|---:|---:|"]  # fmt: skip
        names = ["dinov2_alone", "clip_alone", "llm_prefill_alone", "in_ttft_vision", "in_ttft_dinov2",
                 "in_ttft_projector", "in_ttft_proposer", "in_ttft_region_fuse", "in_ttft_clip", "in_ttft_region_select",
                 "in_ttft_region_extract", "in_ttft_llm_prefill", "in_ttft_other", "in_ttft_ttft"]  # fmt: skip
        inner = {"in_ttft_dinov2", "in_ttft_projector", "in_ttft_proposer", "in_ttft_region_fuse"}
        for name in names:
            values = [part.get(f"{name}_ms") for part in (groma, eager, llava)]
            if any(v is not None for v in values):
                label = f"· {name}" if name in inner else name
                lines.append(f"| {label} | " + " | ".join(fmt(v, ".2f") for v in values) + " |")
        lines += [""]
    if meta["tiny"]:
        lines.append("Tiny CPU configs: a smoke run; the acceptance ratios below say nothing about the 7B shapes.")
    for name, check in report["acceptance"].items():
        op = "<=" if check["limit"] == 1.5 else ">="
        lines.append(f"- {name}: {check['ratio']:.3f} {op} {check['limit']} -> {'PASS' if check['pass'] else 'FAIL'}")
    lines += [
        "",
        "| model | batch | visual tokens | prompt tokens | TTFT ms | decode tok/s per seq | decode tok/s total "
        "| peak mem GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        visual = str(r["visual_tokens"])
        if r["region_slots"]:
            regions = r["regions_selected"]
            visual = f"{r['image_tokens']} + {r['region_slots']} slots ({min(regions)}-{max(regions)} regions used)"
        model = f"{r['model']}, {r['vision']} vision" if "vision" in r else r["model"]
        lines.append(
            f"| {model} | {r['batch_size']} | {visual} | {r['prompt_tokens']} | {r['ttft_ms']:.1f} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s_total']:.1f} | {fmt(r['peak_memory_gib'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU in fp32 (a smoke run, seconds)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT if set, else none)")
    parser.add_argument("--models", nargs="+", choices=("groma", "llava"), default=["groma", "llava"])
    args = parser.parse_args(argv)
    if args.new_tokens < 2 or args.repeats < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        parser.error("need --new-tokens >= 2, --repeats >= 1, --warmup >= 0 and positive batch sizes")
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
        groma_config, llava_config = tiny_configs(base_vocab)
    else:
        groma_config, llava_config = GromaConfig(), llava_7b_config()

    results, groma_parts, llava_parts = [], {}, {}
    if "groma" in args.models:
        rows, groma_parts = run_groma(groma_config, tok, base_vocab, args, device, dtype, clock)
        results += rows
    if "llava" in args.models:
        rows, llava_parts = run_llava(llava_config, tok, args, device, dtype, clock)
        results += rows

    report = {
        "meta": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
            "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype).removeprefix("torch."),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "git_commit": git_commit(), "command": " ".join(["python benchmarks/groma_speed.py", *(argv if argv is not None else sys.argv[1:])]),
            "batch_sizes": args.batch_sizes, "new_tokens": args.new_tokens, "repeats": args.repeats,
            "warmup": args.warmup, "tiny": args.tiny,
            "prompt_note": "toy Llama-style tokenizer on the Groma template (about one token per word); Groma's "
                           "added tokens remapped to ids 32000+k; LLaVA: 'USER: <image>\\n{question} ASSISTANT:'",
        },  # fmt: skip
        "results": results,
        "groma_batch1_components": groma_parts.get(GROMA_VARIANTS[0][0], {}),
        "groma_eager_batch1_components": groma_parts.get(GROMA_VARIANTS[1][0], {}),
        "llava_batch1_components": llava_parts,
        "acceptance": acceptance(results, groma_parts),
    }
    text = markdown(report)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else args.out
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "groma_speed.json").write_text(json.dumps(report, indent=2))
        (out_dir / "groma_speed.md").write_text(text)
    print(text, end="")
    return report


if __name__ == "__main__":
    main()
