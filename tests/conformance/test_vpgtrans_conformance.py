"""VPGTransModel against the contracts transformers' common model and generation tests check: save/load, batching
equivalence, dtype loading, `return_dict=False`, gradient checkpointing (reentrant or not) and continuing generation
from a returned cache. Runs on transformers 5.17 through 5.25."""

import copy

import numpy as np
import pytest
import torch
from transformers import BlipImageProcessor

from groundvlm.modeling import VPGTransConfig, VPGTransModel
from groundvlm.modeling.modeling_groma import CACHE_KWARG
from groundvlm.processing import VPGTransProcessor
from tests._vpgtrans_toys import add_image_token, blip2_config, opt_text_config, opt_tokenizer

GREEDY = {"do_sample": False, "return_dict_in_generate": True}


@pytest.fixture(scope="module")
def setup():
    tok = opt_tokenizer()
    image_token_index = add_image_token(tok)
    config = blip2_config(opt_text_config(len(tok)), image_token_index, config_cls=VPGTransConfig)
    torch.manual_seed(0)
    model = VPGTransModel(config).eval()
    processor = VPGTransProcessor(BlipImageProcessor(size={"height": 16, "width": 16}), tok, num_query_tokens=4)
    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(2)]
    prompts = processor(images=images, text=["a red star on the left", "a ring"])  # left-padded
    training = processor(images=images, text=["a", ""], text_target=["red star", "two blue rings"])  # right-padded
    return model, dict(prompts), dict(training)


def test_save_load_round_trip(setup, tmp_path):
    model, prompts, _ = setup
    model.save_pretrained(tmp_path)
    loaded = VPGTransModel.from_pretrained(tmp_path)
    assert not loaded.training and type(loaded.config) is VPGTransConfig
    with torch.no_grad():
        torch.testing.assert_close(loaded(**prompts).logits, model(**prompts).logits, rtol=0, atol=0)


def test_batching_equivalence(setup):
    """Each row of a padded batch gives the logits it gives alone (as transformers' test_batching_equivalence)."""
    model, prompts, training = setup
    with torch.no_grad():
        for inputs in (prompts, training):
            batched = model(**inputs).logits
            for i in range(2):
                alone = model(**{k: v[i : i + 1] for k, v in inputs.items()}).logits
                torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-5)


def test_dtype_loading(setup, tmp_path):
    model, prompts, _ = setup
    model.save_pretrained(tmp_path)
    half = VPGTransModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = half(**{**prompts, "pixel_values": prompts["pixel_values"].to(torch.bfloat16)}).logits
    assert logits.dtype == torch.bfloat16


def test_return_dict_false_gives_a_tuple(setup):
    model, _, training = setup
    with torch.no_grad():
        out = model(**training)
        as_tuple = model(**training, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[1], out.logits, rtol=0, atol=0)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(setup, use_reentrant):
    model, _, training = setup
    model = copy.deepcopy(model)

    def gradients():
        model.zero_grad()
        model.train()
        torch.manual_seed(0)  # the same dropout masks (checkpointing replays the RNG state)
        model(**training).loss.backward()
        model.eval()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, msg=name)


def test_generate_continues_from_a_returned_cache(setup):
    model, prompts, _ = setup
    whole = model.generate(**prompts, max_new_tokens=6, min_new_tokens=6, **GREEDY)
    first = model.generate(**prompts, max_new_tokens=4, min_new_tokens=4, **GREEDY)
    assert torch.equal(first.sequences, whole.sequences[:, : first.sequences.shape[1]])
    mask = torch.cat((prompts["attention_mask"], torch.ones(2, 4, dtype=torch.long)), dim=1)
    more = model.generate(input_ids=first.sequences, attention_mask=mask, pixel_values=prompts["pixel_values"],
                          **{CACHE_KWARG: first[CACHE_KWARG]}, max_new_tokens=2, min_new_tokens=2, **GREEDY)  # fmt: skip
    assert torch.equal(more.sequences, whole.sequences)
