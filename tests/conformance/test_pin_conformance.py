"""PinForLocalization against the contracts transformers' common model and generation tests check: save/load,
batching equivalence, dtype loading (`from_pretrained(dtype=...)` reaches the insert too), `output_loading_info`,
`set_attn_implementation` (delegated to the base), `return_dict=False`, continuing generation from a returned cache,
and gradient checkpointing: enabling it must checkpoint the frozen base's layers (fewer activations kept for backward)
and leave ψ's gradients unchanged, reentrant or not. Runs on transformers 5.17 through 5.25."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from groundvlm.modeling import PinForLocalization
from groundvlm.modeling.modeling_groma import CACHE_KWARG
from tests._pin_tiny import tiny_pin_with_inputs


def _setup(kind):
    return tiny_pin_with_inputs(kind)


def _step(pin, inputs):
    """One training step: (numbers of activation elements saved for backward, ψ's gradient)."""
    pin.zero_grad()
    pin.train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = pin(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    return sum(saved), torch.cat([p.grad.flatten() for p in pin.pin.parameters()])


@pytest.mark.parametrize("kind", ["blip2", "llava"])
def test_gradient_checkpointing_checkpoints_the_frozen_base(kind):
    pin, inputs = _setup(kind)
    saved_plain, grad_plain = _step(pin, inputs)
    for use_reentrant in (True, False):
        pin.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        saved, grad = _step(pin, inputs)
        assert saved < saved_plain, f"use_reentrant={use_reentrant}: checkpointing saved nothing"
        torch.testing.assert_close(grad, grad_plain)
        assert not pin.vlm.training  # the base still runs in eval mode (no dropout)
    pin.gradient_checkpointing_disable()
    assert _step(pin, inputs)[0] == saved_plain


KINDS = ["blip2", "llava"]
GREEDY = {"do_sample": False, "return_dict_in_generate": True}


def _with_random_insert(kind):
    """A PIN whose ψ is moved away from its initial weights (so a lost or mis-cast ψ shows in the logits)."""
    pin, inputs = _setup(kind)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pin.pin.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return pin, inputs


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory):
    """(kind, pin, its inputs, a self-contained saved folder)."""
    pin, inputs = _with_random_insert(request.param)
    path = tmp_path_factory.mktemp(f"pin_{request.param}")
    pin.save_pretrained(path, include_base=True)
    return request.param, pin, inputs, path


def _logits(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**{**inputs, "pixel_values": inputs["pixel_values"].to(model.dtype)}, **kwargs).logits


def test_save_load_round_trip(saved):
    _, pin, inputs, path = saved
    loaded = PinForLocalization.from_pretrained(path)
    assert not loaded.training and not loaded.vlm.training
    torch.testing.assert_close(_logits(loaded, inputs), _logits(pin, inputs), rtol=0, atol=0)


def test_batching_equivalence(saved):
    """Each row of a padded batch gives the logits it gives alone (as transformers' test_batching_equivalence)."""
    _, pin, inputs, _ = saved
    batched = _logits(pin, inputs)
    for i in range(2):
        alone = _logits(pin, {k: v[i : i + 1] for k, v in inputs.items()})
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-5)


def test_dtype_loading_reaches_the_insert(saved):
    _, pin, inputs, path = saved
    half = PinForLocalization.from_pretrained(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.positional_insert().dtype == torch.bfloat16
    for name, p in pin.pin.state_dict().items():  # the saved ψ, cast (not re-initialised)
        assert torch.equal(half.pin.state_dict()[name], p.to(torch.bfloat16)), name
    assert _logits(half, inputs).dtype == torch.bfloat16
    # "auto" (transformers 5's default): every part in the dtype it was saved in.
    auto = PinForLocalization.from_pretrained(path, dtype="auto")
    assert {p.dtype for p in auto.parameters()} == {torch.float32}


def test_output_loading_info(saved, tmp_path):
    _, pin, _, path = saved
    loaded, info = PinForLocalization.from_pretrained(path, output_loading_info=True)
    assert isinstance(loaded, PinForLocalization)
    assert set(info) == {"missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"}
    assert not any(info.values())
    # The base's own report comes through, under the wrapper's parameter names.
    pin.vlm.save_pretrained(tmp_path / "base")
    weights = load_file(tmp_path / "base" / "model.safetensors")
    dropped = next(k for k in sorted(weights) if k.endswith(("layer_norm.weight", "layernorm.weight")))
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "base" / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    pin.config.base_model_name_or_path, previous = str(tmp_path / "base"), pin.config.base_model_name_or_path
    try:
        pin.save_pretrained(tmp_path / "pin", include_base=False)  # a reference to the edited base folder
    finally:
        pin.config.base_model_name_or_path = previous
    loaded, info = PinForLocalization.from_pretrained(tmp_path / "pin", output_loading_info=True)
    (missing,) = info["missing_keys"]
    assert missing.endswith(".".join(dropped.split(".")[-3:]))  # (LLaVA renames its checkpoint keys on load)
    assert missing in dict(loaded.named_parameters())


def test_set_attn_implementation_reaches_the_base(saved):
    _, _, inputs, path = saved
    loaded = PinForLocalization.from_pretrained(path, attn_implementation="eager")
    assert loaded.config._attn_implementation == loaded.vlm.config._attn_implementation == "eager"
    attended = inputs["attention_mask"].bool()  # padded positions attend to nothing: eager and sdpa differ there
    eager = _logits(loaded, inputs)[attended]
    loaded.set_attn_implementation("sdpa")
    assert loaded.config._attn_implementation == "sdpa"
    assert loaded.vlm.config._attn_implementation == loaded.vlm.config.text_config._attn_implementation == "sdpa"
    torch.testing.assert_close(_logits(loaded, inputs)[attended], eager, rtol=0, atol=1e-5)


def test_return_dict_false_gives_a_tuple(saved):
    _, pin, inputs, _ = saved
    with torch.no_grad():
        out = pin(**inputs, labels=inputs["input_ids"])
        as_tuple = pin(**inputs, labels=inputs["input_ids"], return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[1], out.logits, rtol=0, atol=0)


def test_generate_continues_from_a_returned_cache(saved):
    kind, pin, inputs, _ = saved
    whole = pin.generate(**inputs, max_new_tokens=6, min_new_tokens=6, **GREEDY)
    first = pin.generate(**inputs, max_new_tokens=4, min_new_tokens=4, **GREEDY)
    mask = torch.cat((inputs["attention_mask"], torch.ones(2, 4, dtype=torch.long)), dim=1)
    # BLIP-2's generate encodes the images again (its LLM then reads only the uncached positions); LLaVA takes no
    # images once they are cached, as its own generate.
    images = {"pixel_values": inputs["pixel_values"]} if kind == "blip2" else {}
    more = pin.generate(input_ids=first.sequences, attention_mask=mask, **images, **{CACHE_KWARG: first[CACHE_KWARG]},
                        max_new_tokens=2, min_new_tokens=2, **GREEDY)  # fmt: skip
    assert torch.equal(more.sequences, whole.sequences)
