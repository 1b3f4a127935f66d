"""GPU self-check of Groma's CUDA graphs: the vision side's (`config.vision_cuda_graphs`, graph replay == eager) and
the greedy decoding loop's (static_greedy.py, the same tokens as transformers' loop), on CUDA.

Run on the GPU before `groma_speed.py` (same call): `python benchmarks/groma_graph_check.py`. Prints one PASS/FAIL line
per check and exits 1 if any failed; about 30 s on one H200 (no checkpoint: random weights built on the device).

Two configs: "tiny" (fp32, 112 px, a few small layers) and "7b-lite" (bf16; DINOv2-L at 448 px, the released
proposer and region encoder, the LLM cut to 2 layers of the 7B width). For each, at two batch sizes, the same inputs go
through the eager model (`vision_cuda_graphs=False`) and through the graphs (first call captures, second replays):
the perceiver outputs (image tokens, proposer boxes/scores, fused region maps), the selected region boxes, the prefill
embeddings (image and region tokens written into their slots) and the logits must agree. Then the weights change three
ways and replay must follow: in place (the graph reads the same addresses: no recapture), `param.data = new tensor`
(new address: the runner's pointer check recaptures) and `.to()` round trips (`_apply` drops the graphs).

Agreement: expected bitwise (replay runs the kernels eager runs, on the same inputs, in the same order; cuBLAS, cuDNN
and SDPA pick kernels by shape, not by stream). If a library picked another algorithm under capture, results would
differ by summation order only: a check then passes "within tolerance" when the region selection is identical and every
tensor is within bf16 rounding compounded over the layers (`assert_close` rtol 1.6e-2, the bf16 default, and atol 2e-2
for bf16 / 1e-4 for fp32) and says so; a different region selection or a larger difference fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests._groma_tiny

from groundvlm.modeling import GromaConfig, GromaForConditionalGeneration  # noqa: E402
from tests._groma_tiny import tiny_groma_config  # noqa: E402

RESULTS: list[tuple[str, bool]] = []


def tiny_config() -> GromaConfig:
    """The tests' tiny Groma (tests/_groma_tiny.py) with a wider ViT and 40 proposer queries."""
    vision = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=518, patch_size=14)
    return tiny_groma_config(vision_config=vision, proposer_num_queries=40)


def lite_7b_config() -> GromaConfig:
    """The released vision side at full size; the LLM keeps the 7B width and vocabulary but only 2 layers."""
    config = GromaConfig()
    config.text_config.num_hidden_layers = 2
    return config


def build(config: GromaConfig, dtype: torch.dtype) -> GromaForConditionalGeneration:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = GromaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    # Random proposer heads score every box about 0.5; spread the objectness so that thresholding and NMS select a
    # data-dependent number of regions (< max_region_num), which is what the comparison should exercise.
    with torch.no_grad():
        for head in (*model.region_proposer.class_embed_coco, *model.region_proposer.class_embed_sa1b):
            head.weight.mul_(8.0)
    return model


def static_prompts(config: GromaConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts in the processor's static layout, different text lengths per row."""
    rows = []
    for i in range(batch):
        ids = [1, 5, 6 + i] + [config.image_token_id] * config.num_image_tokens + [11]
        ids += [
            t for j in range(config.num_proxy_tokens) for t in (config.proxy_token_start_id + j, config.region_token_id)
        ]
        rows.append(ids + [12] + list(range(30, 30 + 2 * i)) + [8, 9])
    width = max(map(len, rows))
    ids = torch.tensor([[config.pad_token_id] * (width - len(r)) + r for r in rows], device="cuda")
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device="cuda")
    return ids, mask


def run(model, ids, mask, px) -> dict:
    perceived = model.perceive(px)
    prepared = model.prepare_multimodal_inputs(ids, px, mask)
    logits = model(input_ids=ids, pixel_values=px, attention_mask=mask).logits
    image_embeds, boxes, scores, fused = perceived
    return {
        "image_embeds": image_embeds,
        "boxes": boxes,
        "scores": scores,
        **{f"fused_{k}": f for k, f in enumerate(fused)},
        "region_boxes": prepared.region_boxes,
        "inputs_embeds": prepared.inputs_embeds,
        "attention_mask": prepared.attention_mask,
        "logits": logits,
    }


def compare(name: str, graph: dict, eager: dict, atol: float) -> None:
    counts_g = [len(b) for b in graph["region_boxes"]]
    counts_e = [len(b) for b in eager["region_boxes"]]
    if counts_g != counts_e:
        report(name, False, f"region counts differ: graph {counts_g} vs eager {counts_e}")
        return
    exact, worst = True, {}
    for key, value in eager.items():
        pairs = zip(graph[key], value) if isinstance(value, list) else [(graph[key], value)]
        for g, e in pairs:
            if not torch.equal(g, e):
                exact = False
                diff = (g.float() - e.float()).abs().max().item()
                worst[key] = max(worst.get(key, 0.0), diff)
                try:
                    torch.testing.assert_close(g.float(), e.float(), rtol=1.6e-2, atol=atol)
                except AssertionError:
                    report(name, False, f"{key}: max |graph - eager| = {diff:.3g} beyond tolerance")
                    return
    regions = f"regions {counts_e}"
    if exact:
        report(name, True, f"bitwise equal ({regions})")
    else:
        details = ", ".join(f"{k} {v:.2g}" for k, v in worst.items())
        report(name, True, f"within tolerance, not bitwise ({regions}; max diffs: {details})")


def report(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


@torch.no_grad()
def check_config(label: str, config: GromaConfig, dtype: torch.dtype, batch_sizes=(1, 2)) -> None:
    start = time.perf_counter()
    model = build(config, dtype)
    atol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    size = config.image_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    inputs = {}
    for batch in batch_sizes:
        ids, mask = static_prompts(config, batch)
        inputs[batch] = (ids, mask, torch.randn(batch, 3, size, size, device="cuda", generator=gen))

    def eager(batch):
        model.config.vision_cuda_graphs = False
        try:
            return run(model, *inputs[batch])
        finally:
            model.config.vision_cuda_graphs = True

    for batch in batch_sizes:
        reference = eager(batch)
        captured_before = len(model._vision_graphs)
        first = run(model, *inputs[batch])  # captures (warm-up + capture), then replays
        second = run(model, *inputs[batch])  # replays
        report(
            f"{label} b{batch} graphs used",
            len(model._vision_graphs) == captured_before + 1,
            f"{len(model._vision_graphs)} graph(s) captured",
        )
        compare(f"{label} b{batch} capture call == eager", first, reference, atol)
        compare(f"{label} b{batch} replay == eager", second, reference, atol)

    batch = batch_sizes[-1]
    # in place: same addresses, the graph must see the new values without recapturing
    with torch.no_grad():
        model.vision_model.encoder.layer[-1].mlp.fc2.weight.mul_(1.25)
        model.region_proposer.class_embed_coco[-1].bias.add_(0.5)
        model.region_encoder.mlvl_fuse.fuse_convs[-1].conv.weight.mul_(0.75)
    count = len(model._vision_graphs)
    compare(f"{label} b{batch} after in-place weight change", run(model, *inputs[batch]), eager(batch), atol)
    report(f"{label} in-place change kept the graphs", len(model._vision_graphs) == count, f"{count} graph(s)")

    # new storage with new values, no `_apply`: the pointer check must recapture
    layer = model.vision_model.encoder.layer[0].attention.attention.query
    layer.weight.data = layer.weight.data * 1.5
    proj = model.multi_modal_projector.linear_2
    proj.bias.data = proj.bias.data + 0.25
    compare(f"{label} b{batch} after param.data replacement", run(model, *inputs[batch]), eager(batch), atol)

    # `.to()` round trip: `_apply` drops every graph; the next call recaptures
    model.to(torch.float32 if dtype != torch.float32 else torch.float64).to(dtype)
    report(f"{label} .to() dropped the graphs", len(model._vision_graphs) == 0, f"{len(model._vision_graphs)} graph(s)")
    compare(f"{label} b{batch} after .to() round trip", run(model, *inputs[batch]), eager(batch), atol)

    # conditions under which the graphs must stay unused: a forward hook on a vision module, autograd on
    calls = []
    handle = model.region_proposer.register_forward_hook(lambda *args: calls.append(1))
    count = len(model._vision_graphs)
    try:
        run(model, *inputs[batch])
    finally:
        handle.remove()
    report(
        f"{label} hooked module runs eagerly",
        len(calls) == 3 and len(model._vision_graphs) == count,
        f"hook fired {len(calls)} of 3 times (perceive, prepare, forward)",
    )
    with torch.enable_grad():
        model.perceive(inputs[batch][2])
    report(f"{label} autograd on runs eagerly", len(model._vision_graphs) == count, f"{count} graph(s)")
    print(f"     {label}: {time.perf_counter() - start:.1f} s", flush=True)


@torch.no_grad()
def check_greedy_loop(
    label: str, config: GromaConfig, dtype: torch.dtype, batch: int = 2, new_tokens: int = 24
) -> None:
    """Groma's greedy loop (static_greedy.py: compiled step, one CUDA graph per token) against transformers' loop on
    the same model and inputs: the same tokens (strict in fp32; bf16 reported), the graph replayed for all but the
    warm-up steps, reused by a second call without recapture, an early stop and `return_dict_in_generate` as
    transformers'."""
    start = time.perf_counter()
    model = build(config, dtype)
    ids, mask = static_prompts(config, batch)
    size = config.image_size
    px = torch.randn(batch, 3, size, size, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": px.to(dtype)}
    plain = dict(do_sample=False, max_new_tokens=new_tokens)
    strict = dtype == torch.float32

    def agree(name, ours, theirs):
        same = torch.equal(ours, theirs)
        if strict:
            report(f"{label} greedy loop: {name}", same, "identical tokens" if same else f"{ours} vs {theirs}")
        else:
            print(f"INFO {label} greedy loop: {name}: tokens {'identical' if same else 'differ (bf16)'}", flush=True)

    theirs = model.generate(**inputs, static_greedy=False, **plain)
    ours = model.generate(**inputs, **plain)
    decoder = model.__dict__["_static_greedy_decoder"]
    graph, replays = decoder.graph, decoder.graphs_used
    expected = new_tokens - 1 - decoder.warmup_steps
    report(f"{label} greedy loop: replayed", graph is not None and replays == expected, f"{replays} replays")
    agree("same as transformers' loop", ours, theirs)
    again = model.generate(**inputs, **plain)
    reused = decoder.graph is graph and decoder.graphs_used == new_tokens - 1
    report(f"{label} greedy loop: second call replays the same graph", reused, f"{decoder.graphs_used} replays")
    agree("second call", again, theirs)
    eos = int(theirs[0, ids.shape[1] + 3])
    agree("early stop", model.generate(**inputs, eos_token_id=eos, **plain),
          model.generate(**inputs, eos_token_id=eos, static_greedy=False, **plain))  # fmt: skip
    a = model.generate(**inputs, return_dict_in_generate=True, **plain)
    b = model.generate(**inputs, return_dict_in_generate=True, static_greedy=False, **plain)
    agree("return_dict sequences", a.sequences, b.sequences)
    print(f"     {label} greedy loop: {time.perf_counter() - start:.1f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("vision", "greedy"), default=["vision", "greedy"])
    parts = parser.parse_args(argv).parts
    if not torch.cuda.is_available():
        print("SKIP groma_graph_check: no CUDA device (the graphs are CUDA-only; the CPU path is plain eager)")
        return 0
    print(f"groma_graph_check on {torch.cuda.get_device_name()} · torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    if "vision" in parts:
        check_config("tiny fp32", tiny_config(), torch.float32)
        torch.cuda.empty_cache()
        check_config("7b-lite bf16", lite_7b_config(), torch.bfloat16)
        torch.cuda.empty_cache()
    if "greedy" in parts:
        check_greedy_loop("tiny fp32", tiny_config(), torch.float32)
        torch.cuda.empty_cache()
        check_greedy_loop("7b-lite bf16", lite_7b_config(), torch.bfloat16)
    failed = [name for name, ok in RESULTS if not ok]
    print(
        f"{'FAIL' if failed else 'PASS'} groma_graph_check: {len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed "
        f"in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
