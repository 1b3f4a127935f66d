"""Batch-1/8 decode speed of the static greedy loop (modeling/static_greedy.py) on a 7B Llama shape (random bf16
weights, no vision side) under different inductor options for its compiled step: which options bring the step
closest to the HBM roofline. One JSON line per (options, batch) to $OUT/greedy_step_tuning.jsonl as it goes.

Usage (GPU): `python benchmarks/greedy_step_tuning.py [--batch-sizes 1 8] [--new-tokens 128] [--repeats 3]`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from groundvlm.modeling.static_greedy import StaticGreedyDecoder, StaticGreedySettings  # noqa: E402

OPTIONS = {
    "default": None,  # inductor's defaults (the decoder's own default until coordinate descent, 2026-12-07)
    "coordinate_descent_tuning": {"coordinate_descent_tuning": True},
    # inductor benchmarks its Triton matmul templates against cuBLAS for each of the step's few GEMV shapes
    "max_autotune": {"max_autotune": True, "max_autotune_gemm_backends": "ATEN,TRITON"},
    "max_autotune+coordinate_descent": {
        "max_autotune": True,
        "max_autotune_gemm_backends": "ATEN,TRITON",
        "coordinate_descent_tuning": True,
    },
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS))
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the timings of the first option: a CUDA profile of STEPS graph replays, the "
        "kernels that take the step's time, to $OUT/greedy_step_profile.json",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on the CPU: a smoke run of this script")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT", ".")) / "greedy_step_tuning.jsonl"
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32114, max_position_embeddings=4096)  # fmt: skip
    device = "cpu" if args.tiny else "cuda"
    if args.tiny:
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=300)  # fmt: skip
        args.prompt = min(args.prompt, 32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        llm = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for n, p in llm.named_parameters() if "embed_tokens" not in n)
    print(f"built in {time.perf_counter() - start:.1f} s; {weights / 1e9:.2f} GB read per step", flush=True)
    for name in args.options:
        for batch in args.batch_sizes:
            decoder = StaticGreedyDecoder(llm, compile_options=OPTIONS[name])
            embeds = torch.randn(batch, args.prompt, config.hidden_size, device=device, dtype=torch.bfloat16)
            mask = torch.ones(batch, args.prompt, dtype=torch.long, device=device)
            settings = StaticGreedySettings(args.new_tokens, args.new_tokens, (2,), 0, False)
            t0 = time.perf_counter()
            decoder.generate(embeds, mask, settings)  # compiles and captures
            compile_s = time.perf_counter() - t0

            def timed(settings, decoder=decoder) -> float:
                sync()
                t0 = time.perf_counter()
                decoder.generate(embeds, mask, settings)
                sync()
                return time.perf_counter() - t0

            # the full runs first (they reuse the captured graph), then the prefill-only runs (another key)
            full = sorted(timed(settings) for _ in range(args.repeats))[args.repeats // 2]
            # The profile replays the graph of these full runs: the prefill-only runs below have another key, whose
            # first call drops this graph.
            profile = args.profile and name == args.options[0] and decoder.graph is not None
            if profile:
                profile_graph(decoder, args.profile, batch, full / args.new_tokens * 1e3,
                              out.with_name("greedy_step_profile.json"))  # fmt: skip
            prefill = sorted(timed(StaticGreedySettings(1, 1, (2,), 0, False)) for _ in range(args.repeats))
            prefill = prefill[args.repeats // 2]
            step_ms = (full - prefill) / (args.new_tokens - 1) * 1e3
            rates = [round(args.new_tokens / full, 1)]
            row = {"options": name, "batch": batch, "compile_s": round(compile_s, 1), "step_ms": round(step_ms, 3),
                   "decode_tokens_per_s_per_seq": round(1e3 / step_ms, 1),
                   "roofline_fraction_b1": round(weights / (step_ms / 1e3) / 3.35e12, 3),
                   "generate_tokens_per_s_incl_prefill": rates, "prefill_ms": round(prefill * 1e3, 2),
                   "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}  # fmt: skip
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if args.profile and name == args.options[0] and not profile:
                print(f"no captured graph to profile for {name} batch {batch} (eager or capture failed)", flush=True)
            del decoder
            torch._dynamo.reset()  # every option compiles afresh (and no recompile limit is reached)
            if device == "cuda":
                torch.cuda.empty_cache()


def profile_graph(decoder: StaticGreedyDecoder, steps: int, batch: int, ms_per_token: float, path: Path) -> None:
    """The kernels of `steps` replays of the captured step (CUPTI sees the kernels inside a graph): time and launches
    per step for each kernel name, biggest first, and how much of the step is kernel time at all."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            decoder.graph.replay()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total > 0:
            rows.append({"kernel": event.key[:160], "us_per_step": round(total / steps, 2),
                         "launches_per_step": round(event.count / steps, 2)})  # fmt: skip
    rows.sort(key=lambda r: -r["us_per_step"])
    kernel_us = sum(r["us_per_step"] for r in rows)
    report = {"batch": batch, "steps": steps, "timed_generate_ms_per_token": round(ms_per_token, 3), "kernel_ms_per_step": round(kernel_us / 1e3, 3),
              "launches_per_step": round(sum(r["launches_per_step"] for r in rows), 1), "kernels": rows[:40]}  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "kernels"}), flush=True)
    for row in rows[:15]:
        print(f"  {row['us_per_step']:9.1f} us  x{row['launches_per_step']:6.1f}  {row['kernel']}", flush=True)
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(previous + [report], indent=1))


if __name__ == "__main__":
    main()
