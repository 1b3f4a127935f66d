"""Graph breaks, recompiles and host syncs in the decoding step that `generate` compiles (CPU, tiny models, seconds).

With a static KV cache, transformers' `generate` runs the prefill eagerly and every later step through
`torch.compile(model.__call__, mode="reduce-overhead")` (`get_compiled_call`, i.e. CUDA graphs on a GPU). A graph break,
a host sync (`.item()`, `.tolist()`, `bool(tensor)`, ...) or a guard that fails from one step to the next in that step
costs host time on every generated token. This script measures, for the tests' tiny models on the CPU:

1. the decoding step exactly as `generate` takes it: `generate` runs (static cache) with `prepare_inputs_for_generation`
   wrapped, and the arguments of its first decoding call (one new token per row, the static cache holding the
   prefill, the 2-D mask as transformers keeps it) are deep-copied before the step runs;
2. host syncs of that step run eagerly: `prepare_inputs_for_generation` (with the 4-D mask it builds for a static
   cache), the forward, `_update_model_kwargs_for_generation`; each with its call site (ours = this repository);
3. `torch._dynamo.explain` of the compiled call (`model.__call__(**model_inputs, return_dict=True)`): graphs, graph
   breaks with their reasons and user frames, and which breaks are host syncs (`.item()`/`.tolist()`/data-dependent
   branching...);
4. `generate` itself with the decoding step compiled on the CPU (`CompileConfig(_compile_all_devices)`, a counting
   inductor-free backend) for several steps: the number of graphs compiled (more than one step's graphs = recompiles),
   and by a second `generate` reusing the compiled call, and its greedy tokens against the dynamic cache's (eager);
5. host syncs per token of a whole eager `generate` (sites whose count grows with the number of new tokens: the
   loop's own work too, such as its stop check), and the host time of the eager per-step calls around the compiled one.

Models: Groma (`groma`, the default cache is static), PIN over its tiny BLIP-2 and LLaVA bases (`pin-blip2`,
`pin-llava`) and VPGTrans (`vpgtrans`); the last three decode with a dynamic cache by default and are checked with
`cache_implementation="static"` (for BLIP-2/VPGTrans the decoding steps are the wrapped OPT's own `generate`).

    python benchmarks/groma_decode_graph_breaks.py                        # Groma only
    python benchmarks/groma_decode_graph_breaks.py --models all --out /tmp/decode_graphs.json

About 12 s for Groma and 20 s for all models on 2 CPU cores. Exit status 1 if a checked step has a graph break, a
recompile, a host sync in our code, or tokens that differ from the dynamic cache's.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch._dynamo
from torch.overrides import TorchFunctionMode
from transformers import CompileConfig, GenerationMixin

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests._groma_tiny, tests._pin_tiny, tests._vpgtrans_toys

# Tensor methods / torch functions that read device data on the host (a sync on a GPU), or whose output shape
# depends on tensor values (nonzero & co.: a sync to size the output).
SYNC_OPS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero", "argwhere",
            "masked_select", "unique", "unique_consecutive", "bincount"}  # fmt: skip
# Words of dynamo's graph-break reasons that mean a host read (`.item()`, `.tolist()`, branching on a tensor).
SYNC_REASON_WORDS = ("item", "tolist", "data-dependent", "data dependent", "generic_jump", "__bool__", "nonzero",
                     "dynamic shape operator", "numpy", "unbacked")  # fmt: skip


def _origin(filename: str) -> str:
    path = Path(filename).resolve()
    if REPO in path.parents and "benchmarks" not in path.parts:
        return "ours"
    for package in ("transformers", "torch"):
        if f"/{package}/" in filename:
            return package
    return "other"


def _short(filename: str) -> str:
    path = Path(filename).resolve()
    if REPO in path.parents:
        return str(path.relative_to(REPO))
    for package in ("transformers", "torch"):
        if f"/{package}/" in filename:
            return package + "/" + filename.split(f"/{package}/", 1)[1]
    return filename


def _call_site() -> dict:
    """Innermost frame of the stack outside torch's own Python and this file."""
    here = str(Path(__file__).resolve())
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename != here and _origin(frame.filename) != "torch":
            site = f"{_short(frame.filename)}:{frame.lineno} in {frame.name}"
            return {"site": site, "origin": _origin(frame.filename), "line": (frame.line or "").strip()}
    return {"site": "?", "origin": "other", "line": ""}


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostSyncRecorder(TorchFunctionMode):
    """Records every host read of tensor data (see SYNC_OPS) run under it, with its call site. Works on the CPU,
    where nothing actually waits: it flags what would sync on a GPU."""

    def __init__(self):
        super().__init__()
        self.syncs: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        sync = (
            name in SYNC_OPS
            or (name == "__getitem__" and len(args) > 1 and _is_bool_index(args[1]))  # x[mask]
            or (name == "where" and len(args) == 1 and not kwargs)  # torch.where(cond) = nonzero
            or (
                name == "repeat_interleave"
                and len(args) > 1
                and isinstance(args[1], torch.Tensor)
                and kwargs.get("output_size") is None
            )  # fmt: skip
        )
        if sync:
            self.syncs.append({"op": name, **_call_site()})
        return func(*args, **kwargs)


def _cache_of(kwargs: dict):
    return kwargs.get("cache", kwargs.get("past_key_values"))


def capture_decode_step(model: torch.nn.Module, generate: Callable[[], object]) -> dict:
    """Run `generate()` with the `prepare_inputs_for_generation` of every generating (sub)module wrapped; return the
    module whose loop decodes and the arguments of its first decoding call, deep-copied before the step ran."""
    captured: dict = {}
    owners = [m for m in model.modules() if isinstance(m, GenerationMixin)]
    for owner in owners:
        original = owner.prepare_inputs_for_generation

        def wrapper(input_ids, *args, _original=original, _owner=owner, **kwargs):
            if not captured and not kwargs.get("is_first_iteration") and _cache_of(kwargs) is not None:
                captured.update(owner=_owner, input_ids=input_ids.clone(), args=copy.deepcopy(args),
                                kwargs=copy.deepcopy(kwargs))  # fmt: skip
            return _original(input_ids, *args, **kwargs)

        owner.prepare_inputs_for_generation = functools.update_wrapper(wrapper, original)
    try:
        generate()
    finally:
        for owner in owners:
            del owner.prepare_inputs_for_generation  # the instance attribute: the class's method again
    if not captured:
        raise RuntimeError("generate ran no decoding step with a cache")
    return captured


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


def _break_summary(reason) -> dict:
    frames = [f for f in reason.user_stack if _origin(f.filename) != "torch"] or list(reason.user_stack)
    inner = frames[-1] if frames else None
    text = str(reason.reason)
    ours = [f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in reason.user_stack if _origin(f.filename) == "ours"]
    return {
        "reason": text.strip().splitlines()[0][:300] if text.strip() else "",
        "where": f"{_short(inner.filename)}:{inner.lineno} in {inner.name}" if inner else "?",
        "origin": _origin(inner.filename) if inner else "other",
        "our_frames": ours,
        "host_sync": any(w in text.lower() for w in SYNC_REASON_WORDS),
    }


def _median_ms(fn: Callable[[], object], repeats: int = 30) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e3 * sorted(times)[len(times) // 2], 3)


def analyse_step(step: dict) -> dict:
    """Host syncs of the captured step run eagerly, then `torch._dynamo.explain` of the call `generate` compiles."""
    owner, input_ids = step["owner"], step["input_ids"]
    report: dict = {"generating_module": type(owner).__name__}
    syncs: dict[str, list] = {}
    with torch.no_grad():
        recorder = HostSyncRecorder()
        with recorder:
            inputs = owner.prepare_inputs_for_generation(input_ids, *step["args"], **copy.deepcopy(step["kwargs"]))
        syncs["prepare_inputs_for_generation"] = recorder.syncs
        report["model_inputs"] = {k: _describe(v) for k, v in inputs.items()}
        recorder = HostSyncRecorder()
        with recorder:
            outputs = owner(**copy.deepcopy(inputs), return_dict=True)
        syncs["forward"] = recorder.syncs
        recorder = HostSyncRecorder()
        with recorder:
            owner._update_model_kwargs_for_generation(
                outputs, copy.deepcopy(step["kwargs"]), is_encoder_decoder=owner.config.is_encoder_decoder
            )
        syncs["_update_model_kwargs_for_generation"] = recorder.syncs
        report["host_syncs"] = syncs
        # Host time of the eager per-step work around the compiled call (it does not mutate its arguments' values).
        report["host_ms"] = {
            "prepare_inputs_for_generation": _median_ms(
                lambda: owner.prepare_inputs_for_generation(input_ids, *step["args"], **step["kwargs"])
            ),
            "_update_model_kwargs_for_generation": _median_ms(
                lambda: owner._update_model_kwargs_for_generation(
                    outputs, dict(step["kwargs"]), is_encoder_decoder=owner.config.is_encoder_decoder
                )
            ),
        }

        torch._dynamo.reset()
        explanation = torch._dynamo.explain(owner.__call__)(**copy.deepcopy(inputs), return_dict=True)
        torch._dynamo.reset()
    breaks = [_break_summary(r) for r in explanation.break_reasons]
    report["explain"] = {
        "graph_count": explanation.graph_count,
        "graph_break_count": explanation.graph_break_count,
        "op_count": explanation.op_count,
        "breaks": breaks,
    }
    return report


def compiled_generate_check(owner: torch.nn.Module, generate: Callable[..., object], new_tokens: int) -> dict:
    """`generate` with the decoding step compiled on the CPU by a counting, inductor-free backend; tokens vs the
    dynamic cache's."""
    graphs: list[int] = []

    def counting_backend(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    config = CompileConfig(backend=counting_backend, mode=None)
    config._compile_all_devices = True  # transformers' switch to compile the decoding step off the GPU
    torch._dynamo.reset()
    try:
        compiled = generate(compile_config=config, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        first_call = len(graphs)
        again = generate(
            compile_config=config, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )  # reuses the compiled call
    finally:
        torch._dynamo.reset()
        owner.__dict__.pop("_compiled_call", None)  # `get_compiled_call` keeps the compiled callable on the module
        owner.__dict__.pop("_last_compile_config", None)
    dynamic = generate(cache_implementation="dynamic", max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    compiled, again, dynamic = (getattr(o, "sequences", o) for o in (compiled, again, dynamic))
    return {
        "decoding_steps": new_tokens - 1,
        "graphs_compiled": first_call,
        "graphs_compiled_by_a_second_generate": len(graphs) - first_call,
        "graph_nodes": graphs,
        "tokens_equal_dynamic_cache": bool(torch.equal(compiled, dynamic) and torch.equal(again, dynamic)),
    }


def generate_loop_syncs(generate: Callable[..., object], extra_steps: int = 4) -> list[dict]:
    """Host syncs per decoding step of a whole eager `generate` (static cache, no compilation): the sites whose
    counts grow with the number of generated tokens, and by how much per token. Covers what the step check does
    not: logits processors, stopping criteria, the loop's own stop check."""

    def sites(new_tokens: int):
        recorder = HostSyncRecorder()
        with recorder:
            generate(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        counts: dict[tuple, int] = {}
        for sync in recorder.syncs:
            key = (sync["op"], sync["site"], sync["origin"], sync["line"])
            counts[key] = counts.get(key, 0) + 1
        return counts

    short, long = sites(2), sites(2 + extra_steps)
    return [
        {"op": op, "site": site, "origin": origin, "line": line, "per_step": (n - short.get(key, 0)) / extra_steps}
        for key, n in long.items()
        if n != short.get(key, 0)
        for op, site, origin, line in [key]
    ]


# ---------------------------------------------------------------------------------------------------- the models
def groma_case(batch: int):
    from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
    from groundvlm.processing import build_groma_prompt
    from tests._groma_tiny import groma_tokenizer, random_image, tiny_groma_config, tiny_groma_processor

    tok = groma_tokenizer()
    config = tiny_groma_config(tok)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config).eval()
    prompts = [build_groma_prompt("What is this?"), build_groma_prompt("Describe the image briefly.", grounding=True)]
    images = [random_image(90, 160, seed=1), random_image(120, 80, seed=2)]
    inputs = tiny_groma_processor(tok, config)(images=images[:batch], text=prompts[:batch])
    inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    # Groma's own default cache (static) in transformers' loop: the step that loop compiles for the calls Groma's own
    # greedy loop does not take (sampling, beams, logits processors; static_greedy.py, checked in its tests).
    return model, model, inputs, {"static_greedy": False}


def pin_case(batch: int, base: str):
    from tests._pin_tiny import tiny_pin_with_inputs

    pin, inputs = tiny_pin_with_inputs(base, batch)
    return pin, pin.vlm, inputs, {"cache_implementation": "static"}


def vpgtrans_case(batch: int):
    from tests._vpgtrans_toys import tiny_vpgtrans_with_prompts

    model, inputs = tiny_vpgtrans_with_prompts(batch)
    return model, model, inputs, {"cache_implementation": "static"}


CASES = {
    "groma": groma_case,
    "pin-blip2": functools.partial(pin_case, base="blip2"),
    "pin-llava": functools.partial(pin_case, base="llava"),
    "vpgtrans": vpgtrans_case,
}


def check_model(name: str, batch: int, new_tokens: int) -> dict:
    start = time.perf_counter()
    model, _, inputs, defaults = CASES[name](batch)

    def generate(**kwargs):
        kwargs = {**defaults, **kwargs}
        kwargs.setdefault("max_new_tokens", 3)
        return model.generate(**inputs, do_sample=False, **kwargs)

    step = capture_decode_step(model, generate)
    report = {"model": name, "batch": batch, "cache": type(_cache_of(step["kwargs"])).__name__}
    report.update(analyse_step(step))
    report["compiled_generate"] = compiled_generate_check(step["owner"], generate, new_tokens)
    report["generate_loop_syncs"] = generate_loop_syncs(generate)
    explain, compiled = report["explain"], report["compiled_generate"]
    our_syncs = [s for syncs in report["host_syncs"].values() for s in syncs if s["origin"] == "ours"]
    our_syncs += [s for s in report["generate_loop_syncs"] if s["origin"] == "ours"]
    report["ok"] = (
        explain["graph_break_count"] == 0
        and compiled["graphs_compiled"] == explain["graph_count"]
        and compiled["graphs_compiled_by_a_second_generate"] == 0
        and compiled["tokens_equal_dynamic_cache"]
        and not our_syncs
    )
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def print_report(report: dict) -> None:
    explain, compiled = report["explain"], report["compiled_generate"]
    print(f"== {report['model']} (batch {report['batch']}, {report['cache']}; decoding step of "
          f"{report['generating_module']}, {report['seconds']} s): {'OK' if report['ok'] else 'PROBLEM'}")  # fmt: skip
    print("   step inputs: " + ", ".join(f"{k}={v}" for k, v in report["model_inputs"].items()))
    print(f"   dynamo.explain: {explain['graph_count']} graph(s), {explain['graph_break_count']} graph break(s), "
          f"{explain['op_count']} ops")  # fmt: skip
    for b in explain["breaks"]:
        sync = " [host sync]" if b["host_sync"] else ""
        print(f"     - break{sync} at {b['where']} ({b['origin']}): {b['reason']}")
        for frame in b["our_frames"]:
            print(f"         via {frame}")
    for part, syncs in report["host_syncs"].items():
        if not syncs:
            print(f"   host syncs in {part}: none")
            continue
        print(f"   host syncs in {part}: {len(syncs)}")
        for s in syncs:
            print(f"     - {s['op']} at {s['site']} ({s['origin']}): {s['line']}")
    print("   host time per step (eager, this CPU): " + ", ".join(f"{k} {v} ms" for k, v in report["host_ms"].items()))
    loop = report["generate_loop_syncs"]
    print(f"   host syncs per decoding step of a whole eager generate: {sum(s['per_step'] for s in loop):g}")
    for s in loop:
        print(f"     - {s['per_step']:g} x {s['op']} at {s['site']} ({s['origin']}): {s['line']}")
    print(f"   compiled generate: {compiled['graphs_compiled']} graph(s) compiled over {compiled['decoding_steps']} "
          f"decoding steps, {compiled['graphs_compiled_by_a_second_generate']} more by a second generate; "
          f"greedy tokens equal to the dynamic cache's: {compiled['tokens_equal_dynamic_cache']}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["groma"], choices=[*CASES, "all"])
    parser.add_argument("--batch", type=int, default=2, choices=[1, 2], help="rows (left-padded when 2)")
    parser.add_argument("--new-tokens", type=int, default=6, help="tokens of the compiled generate check")
    parser.add_argument("--out", type=Path, help="write the reports as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    names = list(CASES) if "all" in args.models else args.models
    reports = []
    for name in names:
        reports.append(check_model(name, args.batch, args.new_tokens))
        print_report(reports[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "reports": reports}, indent=2))
        print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
