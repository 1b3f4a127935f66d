"""LAVIS BLIP-2 / VPGTrans checkpoint converter on synthetic checkpoints with the real key names, tiny sizes."""

import pytest
import torch
from transformers import Blip2Config, Blip2ForImageTextRetrieval

from groundvlm.modeling import VPGTransConfig, VPGTransModel
from groundvlm.recipes.convert.lavis_blip2 import convert_lavis_checkpoint, convert_lavis_state_dict, main
from tests._vpgtrans_toys import QFORMER, VISION, blip2_config, opt_text_config

D_VIT, D_Q, D_FF, D_LM, N_Q, N_POS = 32, 32, 64, 24, 4, 17  # 16x16 image, 4x4 patches -> 16 + CLS


class _TrainerState:
    """Stands in for an arbitrary pickled object in a checkpoint (not allowed by weights_only=True)."""


def _r(*shape):
    return torch.randn(*shape)


def lavis_vpg(llm="opt", d_lm=D_LM):
    """The trainable part of a LAVIS blip2_{opt,t5,llama} checkpoint: EVA ViT, ln_vision, Q-Former, projector."""
    sd = {
        "visual_encoder.cls_token": _r(1, 1, D_VIT),
        "visual_encoder.pos_embed": _r(1, N_POS, D_VIT),
        "visual_encoder.patch_embed.proj.weight": _r(D_VIT, 3, 4, 4),
        "visual_encoder.patch_embed.proj.bias": _r(D_VIT),
        "ln_vision.weight": _r(D_VIT),
        "ln_vision.bias": _r(D_VIT),
        "query_tokens": _r(1, N_Q, D_Q),
        "Qformer.bert.embeddings.LayerNorm.weight": _r(D_Q),
        "Qformer.bert.embeddings.LayerNorm.bias": _r(D_Q),
        f"{llm}_proj.weight": _r(d_lm, D_Q),
        f"{llm}_proj.bias": _r(d_lm),
    }
    for i in range(2):
        b = f"visual_encoder.blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": _r(D_VIT),
                b + "norm1.bias": _r(D_VIT),
                b + "attn.qkv.weight": _r(3 * D_VIT, D_VIT),
                b + "attn.q_bias": _r(D_VIT),
                b + "attn.v_bias": _r(D_VIT),
                b + "attn.proj.weight": _r(D_VIT, D_VIT),
                b + "attn.proj.bias": _r(D_VIT),
                b + "norm2.weight": _r(D_VIT),
                b + "norm2.bias": _r(D_VIT),
                b + "mlp.fc1.weight": _r(D_FF, D_VIT),
                b + "mlp.fc1.bias": _r(D_FF),
                b + "mlp.fc2.weight": _r(D_VIT, D_FF),
                b + "mlp.fc2.bias": _r(D_VIT),
            }
        )
        q = f"Qformer.bert.encoder.layer.{i}."
        attentions = ["attention"] + (["crossattention"] if i % 2 == 0 else [])  # cross-attention every 2nd layer
        for att in attentions:
            for name in ("query", "key", "value"):
                sd[q + f"{att}.self.{name}.weight"], sd[q + f"{att}.self.{name}.bias"] = _r(D_Q, D_Q), _r(D_Q)
            sd[q + f"{att}.output.dense.weight"], sd[q + f"{att}.output.dense.bias"] = _r(D_Q, D_Q), _r(D_Q)
            sd[q + f"{att}.output.LayerNorm.weight"], sd[q + f"{att}.output.LayerNorm.bias"] = _r(D_Q), _r(D_Q)
        sd[q + "intermediate_query.dense.weight"], sd[q + "intermediate_query.dense.bias"] = _r(D_FF, D_Q), _r(D_FF)
        sd[q + "output_query.dense.weight"], sd[q + "output_query.dense.bias"] = _r(D_Q, D_FF), _r(D_Q)
        sd[q + "output_query.LayerNorm.weight"], sd[q + "output_query.LayerNorm.bias"] = _r(D_Q), _r(D_Q)
    return sd


def stage1_extras(vocab=30, max_pos=16):
    """What LAVIS stage-1 `blip2_pretrained.pth` adds: the Q-Former text branch and the ITC/ITM/ITG heads."""
    sd = {
        "Qformer.bert.embeddings.word_embeddings.weight": _r(vocab, D_Q),
        "Qformer.bert.embeddings.position_embeddings.weight": _r(max_pos, D_Q),
        "Qformer.bert.embeddings.position_ids": torch.arange(max_pos)[None],
        "Qformer.cls.predictions.bias": _r(vocab),
        "Qformer.cls.predictions.transform.dense.weight": _r(D_Q, D_Q),
        "vision_proj.weight": _r(8, D_Q),
        "vision_proj.bias": _r(8),
        "text_proj.weight": _r(8, D_Q),
        "text_proj.bias": _r(8),
        "itm_head.weight": _r(2, D_Q),
        "itm_head.bias": _r(2),
        "temp": torch.tensor(0.07),
    }
    for i in range(2):
        q = f"Qformer.bert.encoder.layer.{i}."
        sd[q + "intermediate.dense.weight"], sd[q + "intermediate.dense.bias"] = _r(D_FF, D_Q), _r(D_FF)
        sd[q + "output.dense.weight"], sd[q + "output.dense.bias"] = _r(D_Q, D_FF), _r(D_Q)
        sd[q + "output.LayerNorm.weight"], sd[q + "output.LayerNorm.bias"] = _r(D_Q), _r(D_Q)
    return sd


@pytest.fixture
def base(tmp_path):
    cfg = blip2_config(opt_text_config(40), 39, num_query_tokens=N_Q, config_cls=VPGTransConfig)
    model = VPGTransModel(cfg).eval()
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _vpg_keys(model):
    return {k for k in model.state_dict() if not k.startswith("language_model.")}


def test_full_lavis_checkpoint_covers_every_vpg_key_and_values_land(base, tmp_path):
    sd = lavis_vpg()
    torch.save({"model": sd, "config": {"run": {"lr": 1e-4}}, "epoch": 3}, tmp_path / "ckpt.pth")
    model = convert_lavis_checkpoint(tmp_path / "ckpt.pth", base)
    converted, dropped = convert_lavis_state_dict(sd)
    assert set(converted) == _vpg_keys(model) and dropped == []  # nothing missing, nothing unexpected
    state = model.state_dict()
    torch.testing.assert_close(state["vision_model.post_layernorm.weight"], sd["ln_vision.weight"])
    torch.testing.assert_close(state["vision_model.embeddings.class_embedding"], sd["visual_encoder.cls_token"])
    torch.testing.assert_close(state["vision_model.embeddings.position_embedding"], sd["visual_encoder.pos_embed"])
    torch.testing.assert_close(
        state["vision_model.encoder.layers.1.self_attn.projection.weight"],
        sd["visual_encoder.blocks.1.attn.proj.weight"],
    )
    qkv_bias = state["vision_model.encoder.layers.1.self_attn.qkv.bias"]
    torch.testing.assert_close(qkv_bias[:D_VIT], sd["visual_encoder.blocks.1.attn.q_bias"])
    assert torch.count_nonzero(qkv_bias[D_VIT : 2 * D_VIT]) == 0  # EVA has no key bias
    torch.testing.assert_close(qkv_bias[2 * D_VIT :], sd["visual_encoder.blocks.1.attn.v_bias"])
    torch.testing.assert_close(state["qformer.layernorm.bias"], sd["Qformer.bert.embeddings.LayerNorm.bias"])
    torch.testing.assert_close(
        state["qformer.encoder.layer.0.crossattention.attention.key.weight"],
        sd["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"],
    )
    torch.testing.assert_close(
        state["qformer.encoder.layer.1.attention.attention.value.bias"],
        sd["Qformer.bert.encoder.layer.1.attention.self.value.bias"],
    )
    torch.testing.assert_close(
        state["qformer.encoder.layer.0.attention.output.LayerNorm.weight"],
        sd["Qformer.bert.encoder.layer.0.attention.output.LayerNorm.weight"],
    )
    torch.testing.assert_close(state["language_projection.weight"], sd["opt_proj.weight"])
    torch.testing.assert_close(state["query_tokens"], sd["query_tokens"])


def test_partial_projector_checkpoint_merges_onto_the_base(base, tmp_path):
    # the reference word-converter output: only the target projector (plus a None it stores for skipping)
    proj = {"llama_proj.weight": _r(D_LM, D_Q), "llama_proj.bias": _r(D_LM), "opt_model.lm_head.weight": None}
    torch.save({"model": proj}, tmp_path / "linear.pth")
    before = VPGTransModel.from_pretrained(base).state_dict()
    after = convert_lavis_checkpoint([tmp_path / "linear.pth"], base).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"language_projection.weight", "language_projection.bias"}
    torch.testing.assert_close(after["language_projection.bias"], proj["llama_proj.bias"])


def test_stage1_checkpoint_drops_text_branch_or_maps_it_to_image_text_retrieval(base, tmp_path):
    sd = {**lavis_vpg(), **stage1_extras()}
    del sd["opt_proj.weight"], sd["opt_proj.bias"]  # stage 1 has no LLM projector
    torch.save({"model": sd}, tmp_path / "blip2_pretrained.pth")
    model = convert_lavis_checkpoint(tmp_path / "blip2_pretrained.pth", base)
    torch.testing.assert_close(model.state_dict()["query_tokens"], sd["query_tokens"])

    converted, dropped = convert_lavis_state_dict(sd, keep_stage1_heads=True)
    assert sorted(dropped) == sorted(
        [
            "Qformer.bert.embeddings.position_ids",
            "Qformer.cls.predictions.bias",
            "Qformer.cls.predictions.transform.dense.weight",
            "temp",
        ]
    )
    itr_config = Blip2Config(
        vision_config=dict(VISION),
        qformer_config=dict(QFORMER, use_qformer_text_input=True, vocab_size=30, max_position_embeddings=16),
        num_query_tokens=N_Q,
        image_text_hidden_size=8,
    )
    itr = Blip2ForImageTextRetrieval(itr_config)
    result = itr.load_state_dict(converted, strict=True)  # no missing, no unexpected keys
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(
        itr.embeddings.word_embeddings.weight, sd["Qformer.bert.embeddings.word_embeddings.weight"]
    )
    torch.testing.assert_close(
        itr.qformer.encoder.layer[1].output.dense.weight, sd["Qformer.bert.encoder.layer.1.output.dense.weight"]
    )
    torch.testing.assert_close(itr.vision_projection.bias, sd["vision_proj.bias"])


def test_bad_checkpoints_are_clear_errors(base, tmp_path):
    torch.save({"model": lavis_vpg(d_lm=48)}, tmp_path / "other_llm.pth")
    with pytest.raises(
        ValueError,
        match=r"mismatched shapes[\s\S]*language_projection.weight: checkpoint \(48, 32\) vs model \(24, 32\)",
    ):
        convert_lavis_checkpoint(tmp_path / "other_llm.pth", base)
    with pytest.raises(ValueError, match="Unknown LAVIS keys.*visual_encoder.blocks.0.gamma_1"):
        convert_lavis_state_dict({**lavis_vpg(), "visual_encoder.blocks.0.gamma_1": _r(D_VIT)})
    torch.save({"model": lavis_vpg(), "extra": _TrainerState()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="allow_unsafe_pickle"):
        convert_lavis_checkpoint(tmp_path / "pickled.pth", base)
    convert_lavis_checkpoint(tmp_path / "pickled.pth", base, allow_unsafe_pickle=True)


def test_cli_writes_a_safetensors_checkpoint(base, tmp_path):
    sd = lavis_vpg()
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    main(["--checkpoint", str(tmp_path / "ckpt.pth"), "--base", str(base), "--output", str(tmp_path / "out")])
    assert list((tmp_path / "out").glob("*.safetensors")) and not list((tmp_path / "out").glob("*.bin"))
    reloaded = VPGTransModel.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(reloaded.vision_model.post_layernorm.bias, sd["ln_vision.bias"])
