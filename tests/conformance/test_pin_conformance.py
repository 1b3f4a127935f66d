"""PinForLocalization against transformers' gradient-checkpointing contract: enabling it must checkpoint the frozen
base's layers (fewer activations kept for backward) and leave ψ's gradients unchanged, reentrant or not."""

import pytest
import torch
from groundvlm.modeling import PinForLocalization
from groundvlm.processing import PinProcessor
from PIL import Image
from transformers import Blip2Processor

from tests._pin_tiny import blip_image_processor, llava_processor, make_tokenizer, tiny_blip2, tiny_llava


def _setup(kind):
    if kind == "llava":
        tok = make_tokenizer("llama")
        base, processor = tiny_llava(tok), PinProcessor.from_base_processor(llava_processor(tok))
    else:
        tok = make_tokenizer("opt")
        base = tiny_blip2(tok)
        processor = PinProcessor.from_base_processor(
            Blip2Processor(image_processor=blip_image_processor(), tokenizer=tok, num_query_tokens=4)
        )
    images = [Image.new("RGB", (300, 200), (200, 30, 30)), Image.new("RGB", (120, 160), (20, 200, 90))]
    return PinForLocalization.from_base(base), processor(images=images, objects=["cat", "apple"])


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
