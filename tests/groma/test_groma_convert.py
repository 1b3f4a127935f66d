"""Reference checkpoint layout -> ours, and the converted model against an independent statement of the reference math."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from groundvlm.recipes.convert.groma import convert_checkpoint, convert_config, convert_state_dict
from tests import groma_reference_math as ref
from tests._groma_tiny import tiny_groma_config
from tests.groma.test_groma_model import (
    BASE_VOCAB,
    IMAGE,
    PROXY,
    REFER_BOX,
    REFER_FEAT,
    REGION,
    static_prompt,
)

V, VL, VH, MLP = 32, 4, 4, 128  # DINOv2 hidden, layers, heads, mlp
D, DL, DH, FFN, PTS, Q = 32, 2, 4, 64, 4, 20  # proposer
T, TL, TI, NEW = 64, 2, 128, 114  # LLM hidden, layers, intermediate, added tokens
POS = 16  # region pos-embedding width


def make_reference_state_dict(seed=0) -> dict[str, torch.Tensor]:
    """Random tensors under the reference's key names (FoundationVision/groma checkpoints), tiny shapes, incl. aliases and a rotary buffer."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def put(name, *shape, std=0.05, mean=0.0):
        sd[name] = torch.randn(*shape, generator=g) * std + mean

    def linear(name, i, o, std=None, bias=True):
        put(name + ".weight", o, i, std=std or i**-0.5)
        if bias:
            put(name + ".bias", o, std=0.02)

    def norm(name, n):
        put(name + ".weight", n, std=0.05, mean=1.0)
        put(name + ".bias", n, std=0.02)

    p = "perceiver.vis_encoder."
    put(p + "embeddings.cls_token", 1, 1, V, std=0.5)
    put(p + "embeddings.mask_token", 1, V)
    put(p + "embeddings.position_embeddings", 1, 1370, V, std=0.5)
    put(p + "embeddings.patch_embeddings.projection.weight", V, 3, 14, 14, std=0.03)
    put(p + "embeddings.patch_embeddings.projection.bias", V, std=0.02)
    for i in range(VL):
        q = f"{p}encoder.layer.{i}."
        norm(q + "norm1", V)
        for m in ("query", "key", "value"):
            linear(q + f"attention.attention.{m}", V, V)
        linear(q + "attention.output.dense", V, V)
        put(q + "layer_scale1.lambda1", V, std=0.1, mean=0.5)
        norm(q + "norm2", V)
        linear(q + "mlp.fc1", V, MLP)
        linear(q + "mlp.fc2", MLP, V)
        put(q + "layer_scale2.lambda1", V, std=0.1, mean=0.5)
    norm(p + "layernorm", V)

    put("perceiver.input_proj.0.0.weight", D, V, 1, 1, std=V**-0.5)
    put("perceiver.input_proj.0.0.bias", D, std=0.02)
    norm("perceiver.input_proj.0.1", D)
    t = "perceiver.ddetr_transformer."

    def msda(name):
        linear(name + "sampling_offsets", D, DH * PTS * 2, std=0.05)
        put(name + "sampling_offsets.bias", DH * PTS * 2, std=1.0)
        linear(name + "attention_weights", D, DH * PTS)
        linear(name + "value_proj", D, D)
        linear(name + "output_proj", D, D)

    for i in range(DL):
        q = f"{t}encoder.layers.{i}."
        msda(q + "self_attn.")
        norm(q + "self_attn_layer_norm", D)
        linear(q + "fc1", D, FFN)
        linear(q + "fc2", FFN, D)
        norm(q + "final_layer_norm", D)
        q = f"{t}decoder.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(q + "self_attn." + m, D, D)
        norm(q + "self_attn_layer_norm", D)
        msda(q + "encoder_attn.")
        norm(q + "encoder_attn_layer_norm", D)
        linear(q + "fc1", D, FFN)
        linear(q + "fc2", FFN, D)
        norm(q + "final_layer_norm", D)
    put(t + "level_embed", 1, D, std=0.5)
    put(t + "query_position_embeddings.weight", Q, D, std=0.5)
    linear(t + "enc_output", D, D)
    norm(t + "enc_output_norm", D)
    linear(t + "pos_trans", 2 * D, 2 * D)
    norm(t + "pos_trans_norm", 2 * D)
    linear(t + "class_embed_enc", D, 1, std=1.0)
    for i in range(DL):
        linear(f"{t}class_embed_coco.{i}", D, 1, std=0.5)
        linear(f"{t}class_embed_sa1b.{i}", D, 1, std=0.5)
    for i in range(DL + 1):
        linear(f"{t}bbox_embed.{i}.layers.0", D, D)
        linear(f"{t}bbox_embed.{i}.layers.1", D, D)
        linear(f"{t}bbox_embed.{i}.layers.2", D, 4, std=0.3)
    for key in [k for k in sd if k.startswith(t + ("bbox_embed", "class_embed")[0]) or k.startswith(t + "class_embed")]:
        sd[key.replace(t, t + "decoder.", 1)] = sd[key].clone()  # the reference's aliased duplicates

    r = "region_encoder."
    for i in range(3):
        put(f"{r}mlvl_fuse.input_conv.{i}.weight", V, V + 2, 1, 1, std=(V + 2) ** -0.5)
        put(f"{r}mlvl_fuse.input_conv.{i}.bias", V, std=0.02)
        put(f"{r}roi_align.pconvs.{i}.weight", V, V, 3, 3, std=(9 * V) ** -0.5)
        put(f"{r}roi_align.pconvs.{i}.bias", V, std=0.02)
    for i in range(5):
        put(f"{r}mlvl_fuse.fuse_convs.{i}.conv.weight", V, V, 3, 3, std=(9 * V) ** -0.5)
        norm(f"{r}mlvl_fuse.fuse_convs.{i}.gn", V)
    linear(r + "roi_align.pos_embedd.0", 4, POS)
    norm(r + "roi_align.pos_embedd.2", POS)
    linear(r + "roi_align.pos_embedd.3", POS, V)
    norm(r + "roi_align.pos_embedd.5", V)
    linear(r + "roi_align.flatten_linear", V * 196, V)
    linear(r + "roi_align.updims", V, T)

    linear("img_txt_bridge.0", 4 * V, T)
    linear("img_txt_bridge.2", T, T)
    put("llm.model.embed_tokens.weight", BASE_VOCAB, T, std=1.0)
    for i in range(TL):
        q = f"llm.model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            linear(q + "self_attn." + m, T, T, bias=False)
        linear(q + "mlp.gate_proj", T, TI, bias=False)
        linear(q + "mlp.up_proj", T, TI, bias=False)
        linear(q + "mlp.down_proj", TI, T, bias=False)
        put(q + "input_layernorm.weight", T, std=0.05, mean=1.0)
        put(q + "post_attention_layernorm.weight", T, std=0.05, mean=1.0)
        sd[q + "self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old-transformers buffer, must be dropped
    put("llm.model.norm.weight", T, std=0.05, mean=1.0)
    put("llm.lm_head.weight", BASE_VOCAB, T, std=T**-0.5)
    put("new_input_embs.weight", NEW, T, std=1.0)
    put("extra_lm_head.weight", NEW, T, std=T**-0.5)
    return sd


@pytest.fixture(scope="module")
def reference_sd():
    return make_reference_state_dict()


@pytest.fixture(scope="module")
def converted_model(reference_sd, tmp_path_factory):
    """Reference-layout safetensors -> converter -> from_pretrained (no missing/unexpected keys, else it raises)."""
    from safetensors.torch import save_file

    src = tmp_path_factory.mktemp("reference")
    save_file({k: v.contiguous() for k, v in reference_sd.items()}, str(src / "model.safetensors"))
    return convert_checkpoint(src, tmp_path_factory.mktemp("converted"), config=tiny_groma_config())


def _permutation(n):
    return torch.randperm(n, generator=torch.Generator().manual_seed(1234 + n))


@torch.no_grad()
def test_proposer_regions_and_logits_match_reference_math(reference_sd, converted_model):
    model, sd = converted_model, reference_sd
    model.region_permutation = _permutation
    torch.manual_seed(3)
    px = torch.randn(2, 3, 112, 112)
    refer = [torch.tensor([[0.45, 0.55, 0.3, 0.25]]), torch.zeros(0, 4)]

    states = ref.dinov2_hidden_states(sd, "perceiver.vis_encoder.", px, num_heads=VH)
    ref_boxes, ref_scores = ref.proposer(sd, states, D, DH, PTS, Q, DL, DL)
    _, boxes, scores, region_inputs = model.encode_images(px)
    torch.testing.assert_close(boxes, ref_boxes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)
    assert 0.15 < float(ref_scores.max()) and float(ref_scores.min()) < 0.99  # not a degenerate case

    ref_selected = [ref.select_regions(ref_boxes[i], ref_scores[i], refer[i], _permutation) for i in range(2)]
    selected = model.select_regions(boxes, scores, refer)
    for ours, theirs in zip(selected, ref_selected):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert 1 < len(ref_selected[0]) < Q + 1  # NMS removed something, more than the fallback survived

    ref_tokens = ref.region_encoder(sd, states, ref_selected, gn_groups=4, image_size=112)
    tokens = model.region_encoder(region_inputs, selected)
    for ours, theirs in zip(tokens, ref_tokens):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)

    # logits: static layout (batch 2, left padded) vs the reference's dynamically expanded sequences (batch 1 each)
    llama = LlamaModel(
        LlamaConfig(
            hidden_size=T,
            intermediate_size=TI,
            num_hidden_layers=TL,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=BASE_VOCAB,
            rms_norm_eps=1e-6,
        )
    ).eval()
    llama.load_state_dict(
        {k[len("llm.model.") :]: v for k, v in sd.items() if k.startswith("llm.model.") and "rotary" not in k}
    )
    cfg = model.config
    assert cfg.text_config.rms_norm_eps == 1e-6
    prompts = [static_prompt(cfg, n_refer=1, after=(40, 41, 42)), static_prompt(cfg, before=(1, 7))]
    width = max(map(len, prompts))
    ids = torch.tensor([[BASE_VOCAB] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=px, refer_boxes=refer)
    merged = ref.merge_2x2(states[-1])
    token_ids = {
        "image": IMAGE,
        "region": REGION,
        "refer_box": REFER_BOX,
        "refer_feat": REFER_FEAT,
        "proxy_start": PROXY,
    }
    for i, prompt in enumerate(prompts):
        short = [t for t in prompt if t != IMAGE]
        short.insert(prompt.index(IMAGE), IMAGE)
        first_proxy = short.index(PROXY)
        short = short[:first_proxy] + [REGION] + short[first_proxy + 200 :]
        dynamic = ref.expand_prompt(short, cfg.num_image_tokens, len(ref_selected[i]), IMAGE, REGION, PROXY)
        expected = ref.llm_logits(sd, llama, dynamic, merged[i], ref_tokens[i], refer[i], ref_selected[i], token_ids)
        ours = out.logits[i][out.attention_mask[i].bool()]
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # the user box survived NMS with score 1 and <refer_box> points at it
    assert any(torch.allclose(b, refer[0][0]) for b in ref_selected[0])


def test_legacy_pos_interpolation_is_transformers_4_32(converted_model):
    """Our DINOv2 embeddings reproduce 4.32's bicubic (hand-written); 5.x's `size=` interpolation differs."""
    emb = converted_model.vision_model.embeddings
    dummy = torch.zeros(1, 1 + 8 * 8, V)
    ours = emb.interpolate_pos_encoding(dummy, 112, 112)
    pos = emb.position_embeddings.detach()
    expected = ref.bicubic_resize_4_32(pos[0, 1:].T.reshape(V, 37, 37), 8).reshape(V, -1).T
    torch.testing.assert_close(ours[0, 1:], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[0, :1], pos[0, :1])
    emb.legacy_interpolation = False
    try:
        modern = emb.interpolate_pos_encoding(dummy, 112, 112)
    finally:
        emb.legacy_interpolation = True
    assert (modern - ours).abs().max() > 1e-3


def test_converter_rejects_unknown_keys_and_broken_aliases(reference_sd):
    with pytest.raises(ValueError, match="unknown keys"):
        convert_state_dict({**reference_sd, "mystery.weight": torch.zeros(1)})
    broken = dict(reference_sd)
    key = "perceiver.ddetr_transformer.decoder.bbox_embed.0.layers.0.bias"
    broken[key] = broken[key] + 1
    with pytest.raises(ValueError, match="aliased"):
        convert_state_dict(broken)


def test_detector_only_layout(reference_sd, converted_model):
    det = {k[len("perceiver.") :]: v for k, v in reference_sd.items() if k.startswith("perceiver.")}
    converted = convert_state_dict(det, detector_only=True)
    full = convert_state_dict(reference_sd)
    assert set(converted) == {k for k in full if k.startswith(("vision_model.", "region_proposer."))}
    assert not any(k.startswith(("language_model.", "region_encoder.", "multi_modal_projector.")) for k in converted)
    assert all(torch.equal(converted[k], full[k]) for k in converted)
    # loads into the perceiver part of the model (LLM etc. come from elsewhere)
    fresh = GromaForConditionalGeneration(tiny_groma_config())
    fresh.load_state_dict(
        {k: v for k, v in converted_model.state_dict().items() if k.startswith(("vision_model.", "region_proposer."))},
        strict=False,
    )


def test_convert_config_of_the_released_7b():
    released = {
        "model_type": "groma",
        "num_new_token": 114,
        "nms_thres": 0.6,
        "box_score_thres": 0.15,
        "max_region_num": 100,
        "llm_cfg": {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 32000, "pad_token_id": 0},
        "perceiver_cfg": {
            "vis_encoder_cfg": {
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "image_size": 518,
                "patch_size": 14,
            },
            "ddetr_cfg": {"num_labels": 1, "num_feature_levels": 1, "two_stage": True, "with_box_refine": True},
        },
    }
    cfg = convert_config(released)
    assert cfg.text_config.vocab_size == 32114 and cfg.pad_token_id == 32000
    assert (cfg.image_token_id, cfg.region_token_id, cfg.refer_box_token_id) == (32008, 32009, 32010)
    assert (cfg.refer_feat_token_id, cfg.proxy_token_start_id, cfg.num_proxy_tokens) == (32012, 32014, 100)
    assert cfg.region_box_quirk and cfg.proposer_num_queries == 300 and cfg.proposer_encoder_layers == 6


def test_convert_checkpoint_writes_safetensors_and_refuses_pickle(tmp_path, reference_sd):
    from safetensors.torch import save_file

    src = tmp_path / "src"
    src.mkdir()
    torch.save(reference_sd, src / "pytorch_model.bin")
    (src / "config.json").write_text(json.dumps({"model_type": "groma"}))
    with pytest.raises(ValueError, match="allow-pickle"):
        convert_checkpoint(src, tmp_path / "out", config=tiny_groma_config())
    (src / "pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in reference_sd.items()}, str(src / "model.safetensors"))
    model = convert_checkpoint(src, tmp_path / "out", config=tiny_groma_config())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"]
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "model.safetensors" in files and "modeling_groma.py" in files and not any(f.endswith(".bin") for f in files)
    assert torch.equal(model.language_model.lm_head.weight[BASE_VOCAB:], reference_sd["extra_lm_head.weight"])
