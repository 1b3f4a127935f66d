"""The decoding step `generate` compiles (static cache: `get_compiled_call`, CUDA graphs on a GPU) is one graph: no
graph break, no host sync, no recompile from one step to the next, on the tiny Groma on the CPU; compiled, it gives
the dynamic cache's greedy tokens. The step is captured from a real `generate` (benchmarks/groma_decode_graph_breaks.py,
which also reports PIN's and VPGTrans's steps)."""

import pytest

from tests._benchmarks import load_benchmark
from tests._groma_tiny import tiny_groma_left_padded_batch

decode_graphs = load_benchmark("groma_decode_graph_breaks")


@pytest.fixture(scope="module")
def setup():
    model, inputs = tiny_groma_left_padded_batch()

    def generate(**kwargs):
        kwargs.setdefault("max_new_tokens", 3)
        # transformers' loop (the one for calls Groma's greedy loop does not take: test_groma_static_greedy.py)
        return model.generate(**inputs, do_sample=False, static_greedy=False, **kwargs)

    return model, generate


def test_decoding_step_is_one_graph_without_host_syncs(setup):
    model, generate = setup
    step = decode_graphs.capture_decode_step(model, generate)
    assert step["owner"] is model and type(decode_graphs._cache_of(step["kwargs"])).__name__ == "StaticCache"
    # A generated <image> id is plain text once the prompt is cached: no check, no break, for it either.
    for new_token in (None, model.config.image_token_id):
        input_ids = step["input_ids"].clone()
        if new_token is not None:
            input_ids[:, -1] = new_token
        report = decode_graphs.analyse_step({**step, "input_ids": input_ids})
        explain = report["explain"]
        assert explain["graph_break_count"] == 0, explain["breaks"]
        assert explain["graph_count"] == 1
        assert report["host_syncs"] == {"prepare_inputs_for_generation": [], "forward": [],
                                        "_update_model_kwargs_for_generation": []}  # fmt: skip


def test_compiled_decoding_compiles_once_and_keeps_the_greedy_tokens(setup):
    model, generate = setup
    check = decode_graphs.compiled_generate_check(model, generate, new_tokens=5)
    # 4 decoding steps, one graph: no break, no recompile, and none for a second generate
    assert (check["graphs_compiled"], check["graphs_compiled_by_a_second_generate"]) == (1, 0)
    assert check["tokens_equal_dynamic_cache"]
