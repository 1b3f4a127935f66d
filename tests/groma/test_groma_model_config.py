"""GromaConfig defaults build the released 7B shape: per-module parameter counts, stated from the released checkpoint's shapes."""

import torch

from groundvlm.modeling import configuration_groma
from groundvlm.modeling.configuration_groma import GROMA_SPECIAL_TOKENS, GromaConfig
from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
from groundvlm.processing import processing_groma


def _linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def _dinov2_large():
    c, layers, mlp = 1024, 24, 4096
    embeddings = c + c + 1370 * c + _linear(3 * 14 * 14, c)  # cls, mask token, pos [1,1370,1024], patch conv
    layer = 2 * c + 3 * _linear(c, c) + _linear(c, c) + c + 2 * c + _linear(c, mlp) + _linear(mlp, c) + c
    return embeddings + layers * layer + 2 * c  # + final layernorm (kept, unused)


def _proposer():
    d, ffn, heads, points, levels, queries, n_layers = 256, 1024, 8, 4, 1, 300, 6
    msda = _linear(d, heads * levels * points * 2) + _linear(d, heads * levels * points) + 2 * _linear(d, d)
    enc_layer = msda + 2 * d + _linear(d, ffn) + _linear(ffn, d) + 2 * d
    dec_layer = 4 * _linear(d, d) + 2 * d + msda + 2 * d + _linear(d, ffn) + _linear(ffn, d) + 2 * d
    mlp_head = _linear(d, d) + _linear(d, d) + _linear(d, 4)
    return (
        _linear(1024, d)
        + 2 * d  # input_proj conv1x1 + channel LN
        + d  # level_embed [1, 256]
        + n_layers * enc_layer
        + n_layers * dec_layer
        + queries * d  # query_position_embeddings
        + _linear(d, d)
        + 2 * d  # enc_output + norm
        + _linear(2 * d, 2 * d)
        + 4 * d  # pos_trans + norm
        + _linear(d, 1)  # class_embed_enc
        + 2 * n_layers * _linear(d, 1)  # class_embed_coco / sa1b
        + (n_layers + 1) * mlp_head  # bbox_embed 0..6
    )


def _region_encoder():
    c = 1024
    return (
        3 * _linear(c + 2, c)  # input_conv 1x1 with coordinate channels
        + 5 * (c * c * 9 + 2 * c)  # fuse convs: 3x3 no bias + GN
        + 3 * _linear(c * 9, c)  # pconvs 3x3
        + _linear(4, 256)
        + 2 * 256
        + _linear(256, c)
        + 2 * c  # pos_embedd
        + _linear(c * 14 * 14, c)  # flatten_linear (205 M)
        + _linear(c, 4096)  # updims
    )


def _llama_7b(vocab=32114):
    h, inter, layers = 4096, 11008, 32
    layer = 4 * h * h + 3 * h * inter + 2 * h
    return vocab * h + layers * layer + h + vocab * h  # embed_tokens, layers, norm, lm_head


def test_default_config_is_the_released_7b_shape_on_meta():
    with torch.device("meta"):
        model = GromaForConditionalGeneration(GromaConfig())
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    assert counts["vision_model"] == _dinov2_large()
    assert counts["region_proposer"] == _proposer()
    assert counts["region_encoder"] == _region_encoder()
    assert 0.285e9 < counts["region_encoder"] < 0.295e9  # the released region encoder: about 0.29 B
    assert counts["multi_modal_projector"] == _linear(4 * 1024, 4096) + _linear(4096, 4096)  # 2x2-merged input
    assert counts["language_model"] == _llama_7b()
    assert model.get_input_embeddings().weight.shape == (32114, 4096)
    assert model.get_output_embeddings().weight.shape == (32114, 4096)
    assert model.vision_model.embeddings.position_embeddings.shape == (1, 1370, 1024)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())


def test_default_token_ids_follow_the_reference_order():
    cfg = GromaConfig()
    base = 32000
    ids = {tok: base + i for i, tok in enumerate(GROMA_SPECIAL_TOKENS)}
    assert cfg.pad_token_id == ids["[PAD]"] == 32000
    assert cfg.image_token_id == ids["<image>"] == 32008
    assert cfg.region_token_id == ids["<region>"] == 32009
    assert cfg.refer_box_token_id == ids["<refer_box>"] == 32010
    assert cfg.ground_box_token_id == ids["<ground_box>"] == 32011
    assert cfg.refer_feat_token_id == ids["<refer_feat>"] == 32012
    assert cfg.proxy_token_start_id == base + len(GROMA_SPECIAL_TOKENS) == 32014
    assert cfg.proxy_token_start_id + cfg.num_proxy_tokens == cfg.text_config.vocab_size == 32114
    assert cfg.num_image_tokens == 256
    assert (cfg.nms_threshold, cfg.box_score_threshold, cfg.max_region_num) == (0.6, 0.15, 100)
    assert cfg.region_box_quirk and cfg.vision_legacy_pos_interpolation


def test_config_round_trip(tmp_path):
    cfg = GromaConfig(image_size=112, region_box_quirk=False)
    cfg.save_pretrained(tmp_path)
    loaded = GromaConfig.from_pretrained(tmp_path)
    assert loaded.text_config.model_type == "llama" and loaded.text_config.vocab_size == 32114
    assert loaded.vision_config.image_size == 518 and loaded.vision_config.hidden_size == 1024
    assert loaded.image_size == 112 and loaded.region_box_quirk is False and loaded.num_image_tokens == 16


def test_added_token_names_mean_the_same_in_modeling_and_processing():
    for name in ("GROMA_SPECIAL_TOKENS", "GROMA_PROXY_TOKENS", "GROMA_ADDED_TOKENS", "NUM_PROXY_TOKENS"):
        assert getattr(configuration_groma, name) == getattr(processing_groma, name), name
    assert len(configuration_groma.GROMA_SPECIAL_TOKENS) == 14 and len(configuration_groma.GROMA_ADDED_TOKENS) == 114
