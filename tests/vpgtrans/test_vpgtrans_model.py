"""VPGTransModel: HF BLIP-2 checkpoints load with identical outputs; loss; init; bad input."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Blip2ForConditionalGeneration, BlipImageProcessor

from groundvlm.modeling import VPGTransConfig, VPGTransModel
from groundvlm.processing import VPGTransProcessor
from tests._vpgtrans_toys import (
    add_image_token,
    blip2_config,
    opt_text_config,
    opt_tokenizer,
    t5_text_config,
    t5_tokenizer,
)

Q = 4


def _images(n):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(n)]


def _hf_blip2(kind, tmp_path):
    """A random transformers Blip2ForConditionalGeneration saved by transformers, plus a matching processor."""
    tok = opt_tokenizer() if kind == "opt" else t5_tokenizer()
    image_id = add_image_token(tok)
    text_config = opt_text_config(len(tok)) if kind == "opt" else t5_text_config(len(tok))
    model = Blip2ForConditionalGeneration(blip2_config(text_config, image_id, num_query_tokens=Q)).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0, 0.5)  # non-zero, so a loader that re-initialises them is caught
    folder = tmp_path / f"blip2-{kind}"
    model.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "blip-2"
    proc = VPGTransProcessor(
        BlipImageProcessor(size={"height": 16, "width": 16}), tok, num_query_tokens=Q, is_encoder_decoder=kind == "t5"
    )
    return model, folder, proc


@pytest.mark.parametrize("kind", ["opt", "t5"])
def test_hf_blip2_checkpoint_loads_with_identical_logits_and_generation(kind, tmp_path):
    hf, folder, proc = _hf_blip2(kind, tmp_path)
    ours = VPGTransModel.from_pretrained(folder).eval()
    assert ours.config.model_type == "vpgtrans"
    assert set(ours.state_dict()) == set(hf.state_dict())
    for name, tensor in hf.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name

    train = proc(images=_images(2), text=["a", ""], text_target=["red star", "a blue ring"])
    ref_out, our_out = hf(**train), ours(**train)
    torch.testing.assert_close(our_out.logits, ref_out.logits, rtol=0, atol=0)
    torch.testing.assert_close(our_out.loss, ref_out.loss, rtol=0, atol=0)

    prompt = proc(images=_images(2), text=["a red", "a"])
    prompt.pop("labels", None)
    ref_gen = hf.generate(**prompt, max_new_tokens=6, do_sample=False)
    our_gen = ours.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(our_gen, ref_gen)


def test_decoder_only_loss_is_next_token_cross_entropy_over_labelled_positions(tmp_path):
    _, folder, proc = _hf_blip2("opt", tmp_path)
    model = VPGTransModel.from_pretrained(folder).eval()
    batch = proc(images=_images(2), text_target=["red star", "a blue ring"])
    out = model(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    keep = labels != -100
    by_hand = F.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, by_hand)
    # every text token is a target, BOS included (empty prompt): "</s> red star \n" + "</s> a blue ring \n"
    assert keep.sum() == 4 + 5


def test_generate_without_prompt_starts_like_the_reference(tmp_path):
    hf, folder, proc = _hf_blip2("opt", tmp_path)
    ours = VPGTransModel.from_pretrained(folder).eval()
    pixel_values = proc(images=_images(2))["pixel_values"]
    out = ours.generate(pixel_values=pixel_values, max_new_tokens=3, do_sample=False)
    assert out[:, : Q + 1].tolist() == [[proc.image_token_id] * Q + [2]] * 2  # <image>*Q + OPT BOS
    assert torch.equal(out, hf.generate(pixel_values=pixel_values, max_new_tokens=3, do_sample=False))
    _, t5_folder, t5_proc = _hf_blip2("t5", tmp_path)
    t5 = VPGTransModel.from_pretrained(t5_folder).eval()
    # T5 has no BOS: the empty prompt is its </s>, as the reference tokenizes ""
    expected = t5.generate(**t5_proc(images=_images(2)), max_new_tokens=3, do_sample=False)
    assert torch.equal(t5.generate(pixel_values=pixel_values, max_new_tokens=3, do_sample=False), expected)


def test_image_placeholder_mismatch_and_foreign_configs_are_clear_errors(tmp_path):
    _, folder, proc = _hf_blip2("opt", tmp_path)
    model = VPGTransModel.from_pretrained(folder).eval()
    batch = proc(images=_images(2), text=["a", "a red"])
    with pytest.raises(ValueError, match="Image token count mismatch"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:, 1:])
    with pytest.raises(ValueError, match="2 images for 1 text rows"):
        model.generate(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"][:1])
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llava"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='llava'"):
        VPGTransConfig.from_pretrained(folder)


def test_from_scratch_init_draws_query_tokens_and_a_seeing_vit():
    tok = opt_tokenizer()
    cfg = blip2_config(opt_text_config(len(tok) + 1), len(tok), num_query_tokens=64, config_cls=VPGTransConfig)
    model = VPGTransModel(cfg)
    assert abs(model.query_tokens.std().item() - 0.02) < 0.004
    feats = model.vision_model(torch.randn(2, 3, 16, 16)).last_hidden_state  # [B, 1 + 16 patches, 32]
    assert feats.shape == (2, 17, 32)
    assert (feats[0] - feats[1]).abs().max() > 1e-3  # vision initializer_range 0.02: output depends on the image
    zeros = VPGTransModel(
        blip2_config(opt_text_config(len(tok) + 1), len(tok), config_cls=VPGTransConfig, init_query_tokens_std=None)
    )
    assert torch.count_nonzero(zeros.query_tokens) == 0
