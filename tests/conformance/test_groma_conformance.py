"""GromaForConditionalGeneration against the contracts transformers' common model and generation tests check:
the KV cache handed between `generate` and `forward` under the installed transformers' name, static vs dynamic cache,
continuing from a returned cache, assisted decoding, `inputs_embeds`, `return_dict=False`, vision outputs, gradient
checkpointing (reentrant or not), save/load and dtype loading. Runs on transformers 5.17 through 5.25."""

import copy
import logging
import warnings

import pytest
import torch
from transformers import Cache, LogitsProcessor, LogitsProcessorList

from groundvlm.modeling.modeling_groma import CACHE_KWARG, GromaForConditionalGeneration
from groundvlm.processing import build_groma_prompt
from tests._groma_tiny import groma_tokenizer, random_image, tiny_groma_config, tiny_groma_processor

GREEDY = {"do_sample": False, "return_dict_in_generate": True}


@pytest.fixture(scope="module")
def setup():
    tok = groma_tokenizer()
    config = tiny_groma_config(tok)
    torch.manual_seed(0)
    model = GromaForConditionalGeneration(config).eval()
    proc = tiny_groma_processor(tok, config)
    batch = proc(
        images=[random_image(90, 160, seed=1), random_image(120, 80, seed=2)],
        text=[build_groma_prompt("What is this?"), build_groma_prompt("Describe the image briefly.", grounding=True)],
    )
    single = proc(images=random_image(90, 160, seed=1), text=build_groma_prompt("What is this?"))
    return model, dict(batch), dict(single)


def model_inputs(inputs):
    return {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values")}


class ForceTokenAt(LogitsProcessor):
    """Forces `token_id` as the `step`-th generated token (whatever the model predicts)."""

    def __init__(self, prompt_length: int, step: int, token_id: int):
        self.position, self.token_id = prompt_length + step, token_id

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.position:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token_id] = 0
        return scores


def test_decoding_steps_get_the_cache_and_skip_the_prefill_path(setup, caplog):
    model, batch, _ = setup
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    force_image = ForceTokenAt(batch["input_ids"].shape[1], 1, model.config.image_token_id)
    try:
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
            warnings.simplefilter("error", FutureWarning)  # no deprecated cache keyword on any path
            out = model.generate(**model_inputs(batch), max_new_tokens=4, logits_processor=LogitsProcessorList([force_image]), **GREEDY)  # fmt: skip
    finally:
        hook.remove()
    # Emitting the <image> id is plain text once the prompt is cached (it used to raise "no pixel_values").
    assert (out.sequences[:, batch["input_ids"].shape[1] + 1] == model.config.image_token_id).all()
    assert len(calls) == 4
    for step in calls[1:]:
        assert isinstance(step.get(CACHE_KWARG), Cache) and step["input_ids"].shape == (2, 1)
        assert step.get("inputs_embeds") is None and step.get("pixel_values") is None
    assert not [r for r in caplog.records if "deprecated" in r.getMessage() or "past_key_values" in r.getMessage()]


def test_static_cache_is_the_default_and_matches_the_dynamic_cache(setup):
    model, batch, _ = setup
    assert model.generation_config.cache_implementation == "static"
    static = model.generate(**model_inputs(batch), max_new_tokens=5, **GREEDY)
    dynamic = model.generate(**model_inputs(batch), max_new_tokens=5, cache_implementation="dynamic", **GREEDY)
    assert type(static[CACHE_KWARG]).__name__ == "StaticCache"
    assert type(dynamic[CACHE_KWARG]).__name__ == "DynamicCache"
    assert torch.equal(static.sequences, dynamic.sequences)
    assert all(torch.equal(a, b) for a, b in zip(static.region_boxes, dynamic.region_boxes))


@pytest.mark.parametrize("cache_implementation", ["static", "dynamic"])
def test_generate_continues_from_a_returned_cache(setup, cache_implementation):
    model, batch, _ = setup
    inputs = model_inputs(batch)
    whole = model.generate(**inputs, max_new_tokens=6, **GREEDY)
    first = model.generate(**inputs, max_new_tokens=4, cache_implementation=cache_implementation, **GREEDY)
    cache = first[CACHE_KWARG]
    # Without images: the returned mask (unused region pairs zeroed) covers the cached prompt.
    more = model.generate(input_ids=first.sequences, attention_mask=first.attention_mask,
                          **{CACHE_KWARG: copy.deepcopy(cache)}, max_new_tokens=2, **GREEDY)  # fmt: skip
    assert torch.equal(more.sequences, whole.sequences)
    # With the same images: encoded again for the mask and the regions, only the new tokens are prefilled.
    mask = torch.cat((inputs["attention_mask"], torch.ones(2, 4, dtype=torch.long)), dim=1)
    again = model.generate(input_ids=first.sequences, attention_mask=mask, pixel_values=inputs["pixel_values"],
                           **{CACHE_KWARG: cache}, max_new_tokens=2, **GREEDY)  # fmt: skip
    assert torch.equal(again.sequences, whole.sequences)
    assert all(torch.equal(a, b) for a, b in zip(again.region_boxes, whole.region_boxes))


def test_assisted_decoding_equals_greedy(setup):
    model, _, single = setup
    greedy = model.generate(**model_inputs(single), max_new_tokens=6, do_sample=False)
    # Prompt lookup proposes candidates from the prompt (assisted decoding without a second model); the prefill must
    # verify them, and the default static cache must give way (assisted decoding crops its cache).
    assisted = model.generate(**model_inputs(single), max_new_tokens=6, do_sample=False, prompt_lookup_num_tokens=3)
    assert torch.equal(assisted, greedy)


def test_inputs_embeds(setup):
    model, _, single = setup
    text = torch.tensor([[1, 5, 6, 7]])
    from_ids = model.generate(input_ids=text, max_new_tokens=3, do_sample=False)
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(text), max_new_tokens=3, do_sample=False)
    assert torch.equal(from_embeds, from_ids[:, text.shape[1] :])
    with pytest.raises(ValueError, match="not inputs_embeds, with pixel_values"):
        model.generate(inputs_embeds=torch.zeros(1, 3, 64), pixel_values=single["pixel_values"], max_new_tokens=1)


def test_return_dict_false_and_vision_outputs(setup):
    model, batch, _ = setup
    with torch.no_grad():
        out = model(**model_inputs(batch))
        as_tuple = model(**model_inputs(batch), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    cfg = model.config
    assert out.image_hidden_states.shape == (2, cfg.num_image_tokens, cfg.text_config.hidden_size)
    assert len(out.region_boxes) == 2 and out.attention_mask.shape == batch["input_ids"].shape
    generated = model.generate(**model_inputs(batch), max_new_tokens=2, **GREEDY)
    assert generated.attention_mask.shape == generated.sequences.shape
    assert torch.equal(generated.image_hidden_states, out.image_hidden_states)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(setup, use_reentrant):
    model, batch, _ = setup
    model = copy.deepcopy(model)
    inputs = model_inputs(batch)

    def gradients():
        model.zero_grad()
        model.train()
        torch.manual_seed(0)  # the same dropout masks (checkpointing replays the RNG state)
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        model.eval()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)
    # Region selection is a discrete choice: as in the reference, no loss reaches the proposer.
    assert not any(name.startswith("region_proposer.") for name in plain)


def test_save_load_and_dtype(setup, tmp_path):
    model, _, single = setup
    model.save_pretrained(tmp_path)
    assert (tmp_path / "generation_config.json").exists()
    loaded = GromaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.generation_config.cache_implementation == "static"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**model_inputs(single)).logits, model(**model_inputs(single)).logits)
    half = GromaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in half.parameters())
