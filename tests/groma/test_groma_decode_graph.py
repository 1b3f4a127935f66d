"""The decoding step `generate` compiles (static cache: `get_compiled_call`, CUDA graphs on a GPU) is one graph: no
graph break, no host sync, no recompile from one step to the next, on the tiny Groma on the CPU; compiled, it gives
the dynamic cache's greedy tokens. The step is captured from a real `generate` (benchmarks/groma_decode_graph_breaks.py,
which also reports PIN's and VPGTrans's steps)."""

import copy

import pytest
import torch
import torch._dynamo
from transformers import CompileConfig

from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from tests._benchmarks import load_benchmark
from tests._groma_tiny import tiny_groma_config
from tests.groma.test_groma_model import left_pad, static_prompt

decode_graphs = load_benchmark("groma_decode_graph_breaks")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(tiny_groma_config()).eval()
    cfg = model.config
    # Left padding and unused region pairs: the mask and positions of a real batch.
    ids, mask = left_pad([static_prompt(cfg), static_prompt(cfg, before=(1, 5, 6, 7, 9))], cfg.pad_token_id)
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(2, 3, 112, 112)}

    def generate(**kwargs):
        kwargs.setdefault("max_new_tokens", 3)
        return model.generate(**inputs, do_sample=False, **kwargs)

    return model, generate


def explain_decode_step(model, step, new_token=None):
    """(dynamo's explanation of the compiled call, host syncs of the eager step) for the captured decoding step."""
    input_ids = step["input_ids"].clone()
    if new_token is not None:
        input_ids[:, -1] = new_token
    with torch.no_grad():
        model_inputs = model.prepare_inputs_for_generation(input_ids, *step["args"], **copy.deepcopy(step["kwargs"]))
        recorder = decode_graphs.HostSyncRecorder()
        with recorder:
            model(**copy.deepcopy(model_inputs), return_dict=True)
        torch._dynamo.reset()
        try:
            explanation = torch._dynamo.explain(model.__call__)(**copy.deepcopy(model_inputs), return_dict=True)
        finally:
            torch._dynamo.reset()
    return explanation, recorder.syncs


def test_decoding_step_is_one_graph_without_host_syncs(setup):
    model, generate = setup
    step = decode_graphs.capture_decode_step(model, generate)
    assert step["owner"] is model and type(decode_graphs._cache_of(step["kwargs"])).__name__ == "StaticCache"
    # A generated <image> id is plain text once the prompt is cached: no check, no break, for it either.
    for new_token in (None, model.config.image_token_id):
        explanation, syncs = explain_decode_step(model, step, new_token)
        reasons = [str(r.reason) for r in explanation.break_reasons]
        assert explanation.graph_break_count == 0, reasons
        assert explanation.graph_count == 1
        assert syncs == []


def test_compiled_decoding_compiles_once_and_keeps_the_greedy_tokens(setup):
    model, generate = setup
    graphs = []

    def counting_backend(gm, example_inputs):  # inductor-free: runs the captured graph as is
        graphs.append(gm)
        return gm.forward

    config = CompileConfig(backend=counting_backend, mode=None)
    config._compile_all_devices = True  # transformers compiles the decoding step off the GPU too
    torch._dynamo.reset()
    try:
        compiled = generate(compile_config=config, max_new_tokens=5, min_new_tokens=5)
    finally:
        torch._dynamo.reset()
        model.__dict__.pop("_compiled_call", None)
        model.__dict__.pop("_last_compile_config", None)
    assert len(graphs) == 1  # 4 decoding steps, one graph: no break, no recompile
    dynamic = generate(cache_implementation="dynamic", max_new_tokens=5, min_new_tokens=5)
    assert torch.equal(compiled, dynamic)
