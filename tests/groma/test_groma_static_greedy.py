"""Groma's own greedy loop (modeling/static_greedy.py, the default for plain greedy calls) against transformers' loop
on the tiny Groma: the same sequences, lengths, padding after a stop, returned cache; which calls it takes; and its
decoding step compiles to one graph (fullgraph) with the same tokens."""

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList, MinNewTokensLengthLogitsProcessor

from groundvlm.modeling.static_greedy import StaticGreedyDecoder, static_greedy_settings
from tests._groma_tiny import tiny_groma_left_padded_batch


@pytest.fixture(scope="module")
def setup():
    return tiny_groma_left_padded_batch()


def both(model, inputs, **kwargs):
    """(Groma's loop, transformers' loop) outputs of one greedy call; asserts which loop ran."""
    calls = []
    original = StaticGreedyDecoder.generate

    def spy(self, *args, **kw):
        calls.append(1)
        return original(self, *args, **kw)

    StaticGreedyDecoder.generate = spy
    try:
        ours = model.generate(**inputs, do_sample=False, **kwargs)
        assert calls, "the call did not take Groma's greedy loop"
        theirs = model.generate(**inputs, do_sample=False, static_greedy=False, **kwargs)
        assert len(calls) == 1
    finally:
        StaticGreedyDecoder.generate = original
    return ours, theirs


def test_same_sequences_as_transformers_loop(setup):
    model, inputs = setup
    ours, theirs = both(model, inputs, max_new_tokens=12)
    assert ours.shape == theirs.shape == (2, inputs["input_ids"].shape[1] + 12)
    assert torch.equal(ours, theirs)


def test_stop_pad_and_min_new_tokens_as_transformers(setup):
    model, inputs = setup
    reference = model.generate(**inputs, do_sample=False, static_greedy=False, max_new_tokens=10)
    new = reference[:, inputs["input_ids"].shape[1] :]
    # Stop on the token row 0 writes third: row 0 stops early and is padded, row 1 runs on (or stops too).
    eos = int(new[0, 2])
    for extra in ({}, {"min_new_tokens": 5}, {"pad_token_id": 7}):
        ours, theirs = both(model, inputs, max_new_tokens=10, eos_token_id=eos, **extra)
        assert torch.equal(ours, theirs), extra
    # Both rows stop: the output ends with the later stop, as transformers'.
    eos_both = [eos, int(new[1, 1])]
    ours, theirs = both(model, inputs, max_new_tokens=10, eos_token_id=eos_both)
    assert torch.equal(ours, theirs) and ours.shape[1] < reference.shape[1]


def test_return_dict_regions_and_cache_continue_like_transformers(setup):
    model, inputs = setup
    ours, theirs = both(model, inputs, max_new_tokens=6, return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.equal(ours.attention_mask, theirs.attention_mask)
    for a, b in zip(ours.region_boxes, theirs.region_boxes):
        assert torch.equal(a, b)
    cache_field = "cache" if "cache" in type(ours).__dataclass_fields__ else "past_key_values"
    ours_cache, theirs_cache = getattr(ours, cache_field), getattr(theirs, cache_field)
    assert ours_cache.get_seq_length() == theirs_cache.get_seq_length() == ours.sequences.shape[1] - 1
    # Continue both with two more tokens through transformers' loop from the returned caches.
    longer = {"input_ids": ours.sequences, "attention_mask": ours.attention_mask}
    kwargs = dict(do_sample=False, max_new_tokens=2, static_greedy=False)
    a = model.generate(**longer, **{cache_field: ours_cache}, **kwargs)
    b = model.generate(**longer, **{cache_field: theirs_cache}, **kwargs)
    assert torch.equal(a, b)


def test_other_calls_keep_transformers_loop(setup):
    model, inputs = setup
    length = inputs["input_ids"].shape[1]
    assert static_greedy_settings(model, {"max_new_tokens": 4}, length) is not None
    processor = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(length, 2, 0)])
    for kwargs in (
        {"do_sample": True},
        {"num_beams": 2},
        {"cache_implementation": "dynamic"},
        {"output_scores": True, "return_dict_in_generate": True},
        {"repetition_penalty": 1.3},
        {"logits_processor": processor},
        {"streamer": object()},
        {"stop_strings": ["x"]},
        {"use_cache": False},
    ):
        assert static_greedy_settings(model, {"max_new_tokens": 4, **kwargs}, length) is None, kwargs
    settings = static_greedy_settings(model, {"max_length": length + 3, "min_length": length + 2}, length)
    assert (settings.max_new_tokens, settings.min_new_tokens) == (3, 2)


def test_compiled_step_is_one_graph_with_the_same_tokens(setup):
    model, inputs = setup
    torch._dynamo.reset()
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=5)
    decoder = model.__dict__["_static_greedy_decoder"]
    compiled = torch.compile(decoder._decode_step, fullgraph=True, dynamic=False)  # fullgraph: a break raises
    counts = torch._dynamo.utils.counters
    counts.clear()
    decoder._decode_step_eager, decoder._decode_step = decoder._decode_step, compiled
    try:
        got = model.generate(**inputs, do_sample=False, max_new_tokens=5)
        again = model.generate(**inputs, do_sample=False, max_new_tokens=5)
    finally:
        decoder._decode_step = decoder._decode_step_eager
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert counts["stats"]["unique_graphs"] == 1  # 4 + 4 steps, one compile


def test_replaced_weights_rebuild_the_decoding_state(setup):
    model, inputs = setup
    first = model.generate(**inputs, do_sample=False, max_new_tokens=4)
    decoder = model.__dict__["_static_greedy_decoder"]
    state = decoder.state
    model.generate(**inputs, do_sample=False, max_new_tokens=4)
    assert decoder.state is state  # same shapes, same weights: reused
    head = model.language_model.get_output_embeddings()
    original = head.weight.data
    head.weight.data = original.clone()  # new address, same values
    try:
        again = model.generate(**inputs, do_sample=False, max_new_tokens=4)
        assert decoder.state is not state and torch.equal(again, first)
    finally:
        head.weight.data = original


def test_merged_config_as_transformers_merges_it(setup):
    model, inputs = setup
    length = inputs["input_ids"].shape[1]
    # No length given: transformers' own default-length rules (its loop), same output either way.
    assert static_greedy_settings(model, {}, length) is None
    assert torch.equal(model.generate(**inputs), model.generate(**inputs, static_greedy=False))
    # `min_new_tokens` wins over `min_length` (which counts the prompt), as in transformers.
    reference = model.generate(**inputs, do_sample=False, static_greedy=False, max_new_tokens=8)
    eos = [int(reference[0, length + 1]), int(reference[1, length + 2])]
    ours, theirs = both(model, inputs, max_new_tokens=8, min_new_tokens=1, min_length=length + 6, eos_token_id=eos)
    assert torch.equal(ours, theirs)
    # A passed generation_config is filled from the model's own (its eos here), as transformers fills it.
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = eos[0]
    try:
        passed = GenerationConfig(max_new_tokens=8, cache_implementation="static")
        ours, theirs = both(model, inputs, generation_config=passed)
        assert torch.equal(ours, theirs)
    finally:
        model.generation_config.eos_token_id = original


@pytest.mark.parametrize(
    "field, value",
    [
        ("forced_eos_token_id", 0),
        ("max_time", 0.0),
        ("guidance_scale", 0.0),
        ("repetition_penalty", 0.0),
        ("bad_words_ids", []),
        ("sequence_bias", {}),
    ],
)
def test_model_config_fields_that_act_keep_transformers_loop(setup, field, value):
    model, inputs = setup
    original = getattr(model.generation_config, field)
    setattr(model.generation_config, field, value)
    try:
        assert static_greedy_settings(model, {"max_new_tokens": 4}, inputs["input_ids"].shape[1]) is None
    finally:
        setattr(model.generation_config, field, original)


def test_step_tuning_benchmark_smoke(tmp_path, monkeypatch):
    """benchmarks/greedy_step_tuning.py on a tiny Llama on the CPU: one JSON line per (options, batch)."""
    import json

    from tests._benchmarks import load_benchmark

    monkeypatch.setenv("OUT", str(tmp_path))
    tuning = load_benchmark("greedy_step_tuning")
    tuning.main(["--tiny", "--batch-sizes", "1", "2", "--new-tokens", "6", "--repeats", "1", "--options", "default"])
    rows = [json.loads(line) for line in (tmp_path / "greedy_step_tuning.jsonl").read_text().splitlines()]
    assert [(r["options"], r["batch"]) for r in rows] == [("default", 1), ("default", 2)]
    # (the step time is a difference of two timings: on a busy CPU it may come out at any sign, so not checked)
    assert all(r["device"] == "cpu" and r["generate_tokens_per_s_incl_prefill"][0] > 0 for r in rows)
    assert all({"step_ms", "prefill_ms", "compile_s", "roofline_fraction_b1"} <= set(r) for r in rows)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50)  # fmt: skip
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval()


def _full_prefill(llm, embeds, mask):
    """The prefill through a static cache with the full-length mask (what the loop did before compacting): the
    first token's logits and the cache."""
    from transformers import StaticCache

    from groundvlm.modeling.static_greedy import cache_kwarg_of

    full_mask = torch.zeros(mask.shape[0], 128, dtype=torch.long)
    full_mask[:, : mask.shape[1]] = mask
    cache = StaticCache(config=llm.config, max_cache_len=128)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = llm(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, use_cache=True,
                     logits_to_keep=1, **{cache_kwarg_of(llm): cache}).logits[:, -1]  # fmt: skip
    return logits, cache


def _sdpa_calls(monkeypatch) -> list:
    """(key length, explicit mask given, is_causal) of every SDPA call from now on."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        seen.append((key.shape[-2], attn_mask is not None, is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("case", ["holes", "holes_and_left_padding"])
def test_compacted_prefill_fills_the_cache_as_the_full_prefill(case, monkeypatch):
    """The prefill runs over the unmasked tokens only (Groma's prompt masks its unused region pairs): the first
    token's logits and every unmasked cache slot equal the prefill through the whole static cache; rows without
    left padding reach SDPA's causal kernel (no explicit mask) over the unmasked tokens alone."""
    from groundvlm.modeling.static_greedy import StaticGreedySettings

    llm = _tiny_llama()
    embeds = torch.randn(2, 12, 32)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[:, 4:7] = 0  # holes (unused region pairs), 9 tokens kept in each row
    if case == "holes_and_left_padding":
        mask[1, :2] = 0
    expected, full = _full_prefill(llm, embeds, mask)
    decoder = StaticGreedyDecoder(llm)
    decoder._prepare(2, 128, StaticGreedySettings(4, 0, (), 0, False), embeds.dtype, embeds.device)
    seen = _sdpa_calls(monkeypatch)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = decoder._compact_prefill(embeds, mask, positions, int(mask.sum(1).max())).logits[:, -1]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # 2 layers; with left padding in the compacted batch an explicit mask is needed, without it none
    assert seen == [(9, case != "holes", case == "holes")] * 2
    for ours, theirs in zip(decoder.cache.layers, full.layers):
        assert int(ours.cumulative_length) == int(theirs.cumulative_length) == 12
        for row in range(2):
            used = mask[row].bool()
            torch.testing.assert_close(ours.keys[row, :, :12][:, used], theirs.keys[row, :, :12][:, used])
            torch.testing.assert_close(ours.values[row, :, :12][:, used], theirs.values[row, :, :12][:, used])


@pytest.mark.parametrize("case", ["holes", "last_masked", "all_masked"])
def test_loop_tokens_match_transformers_whatever_the_mask(case, monkeypatch):
    """Greedy tokens of the loop equal transformers' `generate`; a prompt whose last position is masked (right
    padding: transformers reads the first token's logits there) or an empty mask takes the full prefill."""
    from groundvlm.modeling.static_greedy import StaticGreedySettings

    llm = _tiny_llama()
    embeds = torch.randn(2, 12, 32)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[:, 4:7] = 0
    if case == "last_masked":
        mask[0, -2:] = 0
    elif case == "all_masked":
        mask.zero_()
    compacted = []
    original = StaticGreedyDecoder._compact_prefill

    def spy(self, *args):
        compacted.append(1)
        return original(self, *args)

    monkeypatch.setattr(StaticGreedyDecoder, "_compact_prefill", spy)
    tokens, _ = StaticGreedyDecoder(llm).generate(embeds, mask, StaticGreedySettings(6, 6, (), 0, False))
    assert bool(compacted) == (case == "holes")
    if case == "all_masked":
        assert tokens.shape == (2, 6)  # runs (transformers' own result on an empty mask is not a reference)
        return
    with torch.no_grad():
        theirs = llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, max_new_tokens=6,
                              min_new_tokens=6, pad_token_id=0, eos_token_id=None)  # fmt: skip
    assert torch.equal(tokens, theirs[:, -6:])


def test_step_compiles_with_coordinate_descent_tuning_by_default():
    """The measured default (benchmarks/RESULTS.md: 6.39 -> 5.37 ms a 7B-shape step on an H100); None keeps
    inductor's defaults; the decoder keeps its own copy of the options."""
    from groundvlm.modeling.static_greedy import DEFAULT_COMPILE_OPTIONS, StaticGreedyDecoder

    llm = _tiny_llama()
    decoder = StaticGreedyDecoder(llm)
    assert decoder.compile_options == {"coordinate_descent_tuning": True} == DEFAULT_COMPILE_OPTIONS
    decoder.compile_options["max_autotune"] = True
    assert DEFAULT_COMPILE_OPTIONS == {"coordinate_descent_tuning": True}
    assert StaticGreedyDecoder(llm, compile_options=None).compile_options is None
