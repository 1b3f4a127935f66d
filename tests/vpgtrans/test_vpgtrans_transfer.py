"""VPGTrans transfer pieces: token pairing, word converter, merged projector, target-model construction."""

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BlipImageProcessor

from groundvlm.modeling import VPGTransConfig, VPGTransModel
from groundvlm.modeling.vpgtrans_transfer import (
    TokenPairs,
    WordConverter,
    build_target_model,
    cosine_loss,
    guess_tokenizer_family,
    merge_projector,
    pair_caption_tokens,
    pre_caption,
    train_word_converter,
)
from groundvlm.processing import VPGTransProcessor
from tests._vpgtrans_toys import (
    add_image_token,
    blip2_config,
    llama_tokenizer,
    opt_text_config,
    opt_tokenizer,
    t5_text_config,
    t5_tokenizer,
)

CAPTIONS = ["A red star.", "a blue ring", "A striped circle!", "two green circle"]


def test_pre_caption_matches_reference_rules():
    assert pre_caption('  A "Red" (big) star!!  on: the~left.\n') == "a red big star on the left"
    assert pre_caption("one two three four", max_words=2) == "one two"


def test_tokenizer_families_are_read_from_special_tokens():
    assert [guess_tokenizer_family(t()) for t in (opt_tokenizer, llama_tokenizer, t5_tokenizer)] == [
        "opt",
        "llama",
        "t5",
    ]


def test_opt_llama_pairing_keeps_both_bos():
    opt, llama = opt_tokenizer(), llama_tokenizer()
    pairs = pair_caption_tokens(CAPTIONS, opt, llama)
    o, l_ = opt.get_vocab(), llama.get_vocab()
    # "striped" is 1 OPT token but "▁str"+"iped" in LLaMA -> that caption is dropped
    assert pairs.pairs == [
        ([2, o["a"], o["red"], o["star"]], [1, l_["\u2581a"], l_["\u2581red"], l_["\u2581star"]]),
        ([2, o["a"], o["blue"], o["ring"]], [1, l_["\u2581a"], l_["\u2581blue"], l_["\u2581ring"]]),
        ([2, o["two"], o["green"], o["circle"]], [1, l_["\u2581two"], l_["\u2581green"], l_["\u2581circle"]]),
    ]
    assert not pairs.same_tokenizer and pairs.num_captions == 4 and pairs.num_tokens == 12


def test_opt_t5_pairing_drops_opt_bos_t5_eos_and_lone_space():
    opt, t5 = opt_tokenizer(), t5_tokenizer()
    o, t = opt.get_vocab(), t5.get_vocab()
    assert t["\u2581"] == 3  # T5's lone "▁" id
    pairs = pair_caption_tokens(["a blue ring", "a striped star"], opt, t5)
    # T5: "▁a ▁ blue ▁ring </s>" -> drop </s> and "▁" -> 3 tokens, paired with OPT's "a blue ring" (BOS dropped)
    assert pairs.pairs == [([o["a"], o["blue"], o["ring"]], [t["\u2581a"], t["blue"], t["\u2581ring"]])]
    reverse = pair_caption_tokens(["a blue ring"], t5, opt)
    assert reverse.pairs == [([t["\u2581a"], t["blue"], t["\u2581ring"]], [o["a"], o["blue"], o["ring"]])]


def test_same_tokenizer_pairs_every_token_with_itself():
    opt = opt_tokenizer()
    other_copy = opt_tokenizer()
    add_image_token(other_copy)  # a target tokenizer that already has <image> is still the same family
    for target in (opt, other_copy):
        pairs = pair_caption_tokens(["a red star"], opt, target)
        o = opt.get_vocab()
        assert pairs.pairs == [([2, o["a"], o["red"], o["star"]], [2, o["a"], o["red"], o["star"]])]
        assert pairs.same_tokenizer


def test_no_pairable_captions_is_a_clear_error():
    with pytest.raises(ValueError, match="no word pairs"):
        pair_caption_tokens(["striped striped"], opt_tokenizer(), llama_tokenizer())
    with pytest.raises(TypeError):
        pair_caption_tokens("a red star", opt_tokenizer(), llama_tokenizer())


def test_cosine_loss_by_hand():
    pred = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    target = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    # cosines 0 and 1 -> mean(1 - cos) = 0.5
    assert cosine_loss(pred, target).item() == pytest.approx(0.5)


def test_word_converter_learns_a_linear_map_with_reference_defaults():
    g = torch.Generator().manual_seed(1)
    source = torch.randn(12, 6, generator=g)
    true_w, true_b = torch.randn(5, 6, generator=g), torch.randn(5, generator=g)
    target = source @ true_w.T + true_b
    pairs = TokenPairs(
        pairs=[([i, (i + 1) % 12, (i + 5) % 12], [i, (i + 1) % 12, (i + 5) % 12]) for i in range(12)],
        same_tokenizer=False,
        num_captions=12,
    )
    steps = []
    conv = train_word_converter(
        source, target, pairs, captions_per_batch=4, on_step=lambda e, s, l: steps.append((e, l))
    )
    assert isinstance(conv, WordConverter) and conv.bias is not None
    assert len(steps) == 8 * 3  # 8 epochs across families, 12 captions / 4 per batch
    assert steps[-1][1] < steps[0][1] and steps[-1][1] < 0.05
    within = TokenPairs(pairs=pairs.pairs, same_tokenizer=True, num_captions=12)
    steps.clear()
    train_word_converter(source, target, within, captions_per_batch=12, on_step=lambda e, s, l: steps.append(e))
    assert steps == [0, 1, 2, 3, 4]  # 5 epochs within one family
    with pytest.raises(ValueError, match="exceed the embedding tables"):
        train_word_converter(source[:3], target, pairs)


def test_merge_projector_equals_converter_after_source_projector():
    source_proj, converter = nn.Linear(7, 5), WordConverter(5, 3)
    merged = merge_projector(converter, source_proj)
    x = torch.randn(4, 7)
    with torch.no_grad():
        sequential = converter(source_proj(x))
        by_hand = x @ (converter.weight @ source_proj.weight).T + (converter.weight @ source_proj.bias + converter.bias)
    torch.testing.assert_close(merged(x), sequential, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged(x), by_hand, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="another source LLM"):
        merge_projector(WordConverter(4, 3), source_proj)


def _source_model():
    opt = opt_tokenizer()
    image_id = add_image_token(opt)
    cfg = blip2_config(opt_text_config(len(opt)), image_id, config_cls=VPGTransConfig)
    return VPGTransModel(cfg).eval(), opt


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_build_target_model_inherits_vpg_and_merges_projector(family):
    source, _ = _source_model()
    if family == "llama":
        from transformers import LlamaConfig

        tok = llama_tokenizer()
        lm = AutoModelForCausalLM.from_config(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=4,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    else:
        tok = t5_tokenizer()
        lm = AutoModelForSeq2SeqLM.from_config(t5_text_config(len(tok), hidden=16))
    assert "<image>" not in tok.get_vocab()
    converter = WordConverter(24, 16)
    target = build_target_model(source, lm, tok, converter)

    image_id = tok.convert_tokens_to_ids("<image>")
    assert target.config.image_token_index == image_id
    assert lm.get_input_embeddings().num_embeddings >= image_id + 1  # resized to hold <image>
    for name, tensor in source.state_dict().items():
        if name.startswith(("vision_model.", "qformer.", "query_tokens")):
            torch.testing.assert_close(target.state_dict()[name], tensor)
    assert target.language_model is lm
    x = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            target.language_projection(x), converter(source.language_projection(x)), rtol=1e-5, atol=1e-6
        )
    assert target.config.use_decoder_only_language_model == (family == "llama")
    if family == "llama":
        assert target.generation_config.eos_token_id == tok.convert_tokens_to_ids("\n")

    proc = VPGTransProcessor(
        BlipImageProcessor(size={"height": 16, "width": 16}), tok, num_query_tokens=4, is_encoder_decoder=family == "t5"
    )
    batch = proc(images=[np.zeros((16, 16, 3), np.uint8)] * 2, text_target=["a red star", "a ring"])
    loss = target(**batch).loss
    assert torch.isfinite(loss)
    # the source's VPG is a copy, not shared
    assert target.qformer is not source.qformer


def test_inherit_baseline_has_a_fresh_projector_and_bad_converter_is_rejected():
    source, opt = _source_model()
    lm = AutoModelForCausalLM.from_config(opt_text_config(len(opt), hidden=40))
    target = build_target_model(source, lm, opt)
    assert target.language_projection.weight.shape == (40, 32)
    assert not torch.equal(target.language_projection.weight[:24], source.language_projection.weight)
    with pytest.raises(ValueError, match="does not fit"):
        build_target_model(source, lm, opt, WordConverter(24, 7))
