"""VPGTransProcessor: the reference's text handling, checked against hand-written id lists."""

import numpy as np
import pytest
import torch
from transformers import BlipImageProcessor

from groundvlm.processing import VPGTransProcessor
from tests._vpgtrans_toys import llama_tokenizer, opt_tokenizer, t5_tokenizer

Q = 3


def _images(n):
    return [np.full((16, 16, 3), 40 * i, dtype=np.uint8) for i in range(n)]


def _processor(tokenizer, **kw):
    return VPGTransProcessor(BlipImageProcessor(size={"height": 16, "width": 16}), tokenizer, num_query_tokens=Q, **kw)


def test_decoder_only_training_layout_and_labels():
    proc = _processor(opt_tokenizer())
    img = proc.image_token_id
    # OPT vocab: </s>=2, <pad>=1, "\n"=4, a=5, red=7, star=10, ring=11 (see tests/_vpgtrans_toys.py)
    assert proc.tokenizer.convert_tokens_to_ids(["a", "red", "star", "ring"]) == [5, 7, 10, 11]
    out = proc(images=_images(2), text_target=["a red star", "a ring"])
    assert out["input_ids"].tolist() == [[img] * Q + [2, 5, 7, 10, 4], [img] * Q + [2, 5, 11, 4, 1]]
    assert out["attention_mask"].tolist() == [[1] * 8, [1] * 7 + [0]]
    # empty prompt: the BOS stays a target (reference quirk); image and pad positions are ignored
    assert out["labels"].tolist() == [[-100] * Q + [2, 5, 7, 10, 4], [-100] * Q + [2, 5, 11, 4, -100]]
    assert out["pixel_values"].shape == (2, 3, 16, 16)


def test_prompt_tokens_are_masked_and_text_is_truncated():
    proc = _processor(opt_tokenizer(), max_txt_len=4)
    img = proc.image_token_id
    out = proc(images=_images(1), text="a red", text_target="star ring")
    # "</s> a red star ring \n" cut to 4 text tokens; the prompt "</s> a red" (3 tokens) is masked
    assert out["input_ids"].tolist() == [[img] * Q + [2, 5, 7, 10]]
    assert out["labels"].tolist() == [[-100] * Q + [-100, -100, -100, 10]]


def test_generation_inputs_are_left_padded_after_the_placeholders():
    proc = _processor(opt_tokenizer())
    img = proc.image_token_id
    out = proc(images=_images(2), text=["a red star", "a"])
    assert out["input_ids"].tolist() == [[img] * Q + [2, 5, 7, 10], [img] * Q + [1, 1, 2, 5]]
    assert out["attention_mask"].tolist() == [[1] * 7, [1] * Q + [0, 0, 1, 1]]
    assert "labels" not in out
    # no prompt: [<image>] * Q + BOS, like transformers' Blip2 generate default
    assert proc(images=_images(1))["input_ids"].tolist() == [[img] * Q + [2]]


def test_llama_tokenizer_pads_with_eos_and_stops_on_newline():
    tok = llama_tokenizer()
    assert tok.pad_token is None
    proc = _processor(tok)
    assert proc.tokenizer.pad_token == "</s>"
    # "\n" alone tokenizes to ["▁", "\n"] (as LLaMA's [29871, 13]); the last id is the stop id
    assert proc.newline_token_id == tok.convert_tokens_to_ids("\n")


def test_t5_prompt_goes_to_encoder_and_target_to_labels():
    proc = _processor(t5_tokenizer(), is_encoder_decoder=True)
    img = proc.image_token_id
    out = proc(images=_images(2), text=["Question: x Short answer:", ""], text_target=["red", "a star"])
    vocab = proc.tokenizer.get_vocab()
    red, a, star = vocab["\u2581red"], vocab["\u2581a"], vocab["\u2581star"]
    # labels keep T5's own </s> (id 1), no "\n"; padding (id 0) -> -100
    assert out["labels"].tolist() == [[red, 1, -100], [a, star, 1]]
    assert out["decoder_attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    # an empty prompt is just </s> on the encoder side
    assert out["input_ids"][1].tolist()[: Q + 1] == [img] * Q + [1]
    assert proc.newline_token_id is None
    assert proc.vqa_prompt("what colour?") == "Question: what colour? Short answer:"
    assert _processor(opt_tokenizer()).vqa_prompt("what colour?") == "Question: what colour? Answer:"


def test_post_process_generation_strips_prompt_and_cuts_at_newline():
    proc = _processor(opt_tokenizer())
    img = proc.image_token_id
    prompt = torch.tensor([[img] * Q + [2, 5]])
    generated = torch.tensor([[img] * Q + [2, 5, 7, 10, 4]])
    assert proc.post_process_generation(generated, input_ids=prompt) == ["red star"]


def test_bad_input_is_rejected_clearly():
    proc = _processor(opt_tokenizer())
    with pytest.raises(ValueError, match="Image/text count mismatch"):
        proc(images=_images(2), text=["a red star"])
    with pytest.raises(ValueError, match="prompts but"):
        proc(images=_images(2), text=["a", "b"], text_target=["a"])
    with pytest.raises(TypeError, match="text must be"):
        proc(images=_images(1), text=[3])
    with pytest.raises(ValueError, match="num_query_tokens"):
        VPGTransProcessor(BlipImageProcessor(), opt_tokenizer(), num_query_tokens=0)
