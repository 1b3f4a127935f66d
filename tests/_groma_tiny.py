"""Tiny Groma pieces that share one vocabulary: a toy Llama tokenizer with Groma's 114 tokens, a tiny
`GromaConfig` whose token ids are that tokenizer's, and the matching `GromaProcessor`.

The one tiny Groma config of the tests and benchmarks (`tiny_groma_config`), with or without a tokenizer.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from groundvlm.modeling.configuration_groma import GromaConfig
from groundvlm.processing import GromaImageProcessor, GromaProcessor, add_groma_tokens
from groundvlm.processing.processing_groma import FIRST_ASSISTANT_TURN, FIRST_USER_TURN, SYSTEM_PROMPT
from groundvlm.recipes.toyworld.tokenizers import train_tokenizer

# Words that train into single "▁word" tokens, so tests can restrict free decoding steps to readable words.
WORDS = ("red", "star", "blue", "ring", "green", "square", "on", "grass", "dog", "left", "right", "of", "and")
QUESTIONS = ("Describe the image briefly.", "What is this?", "Where is the red star on the left?")


def groma_tokenizer():
    """Toy Llama tokenizer (`<unk>`, `<s>`, `</s>` = 0, 1, 2) trained on Groma's prompt text, + Groma's tokens."""
    corpus = [SYSTEM_PROMPT, FIRST_USER_TURN, FIRST_ASSISTANT_TURN, *QUESTIONS, " ".join(WORDS)] * 4
    # vocab_size above the saturated size: keep every word whole (the default trims the LLaMA-style vocabulary)
    tokenizer = train_tokenizer("llama", corpus, vocab_size=1_000_000)
    add_groma_tokens(tokenizer)
    return tokenizer


def word_token_ids(tokenizer) -> list[int]:
    """Ids of the single-token words of `WORDS` (each `▁word`)."""
    ids = tokenizer.convert_tokens_to_ids([f"▁{w}" for w in WORDS])
    assert tokenizer.unk_token_id not in ids, "the toy corpus must make every word of WORDS one token"
    return ids


# Without a tokenizer, ids follow the reference's added-token order at BASE_VOCAB + offset (add_groma_tokens).
BASE_VOCAB = 1000
FIXED_TOKEN_IDS = dict(
    pad=BASE_VOCAB,
    image=BASE_VOCAB + 8,
    region=BASE_VOCAB + 9,
    refer_box=BASE_VOCAB + 10,
    ground_box=BASE_VOCAB + 11,
    refer_feat=BASE_VOCAB + 12,
    proxy_start=BASE_VOCAB + 14,
)


def groma_token_id_kwargs(tokenizer=None) -> dict:
    """GromaConfig's special-token keyword arguments (`pad_token_id`, `image_token_id`, ..., `proxy_token_start_id`):
    `tokenizer`'s ids of Groma's added tokens, or `FIXED_TOKEN_IDS` without one."""
    if tokenizer is None:
        ids = FIXED_TOKEN_IDS
    else:
        names = ("[PAD]", "<image>", "<region>", "<refer_box>", "<ground_box>", "<refer_feat>", "<r0>")
        ids = dict(zip(FIXED_TOKEN_IDS, tokenizer.convert_tokens_to_ids(list(names))))
    return {("proxy_token_start_id" if k == "proxy_start" else f"{k}_token_id"): v for k, v in ids.items()}


def tiny_groma_config(tokenizer=None, **overrides) -> GromaConfig:
    """The tiny Groma of every test and benchmark: DINOv2 with 4 blocks fed 112 px (an 8x8 patch grid, 16 image
    tokens), a 2-layer Llama, a 2+2-layer proposer with 20 queries. Vocabulary and special-token ids are
    `tokenizer`'s (base vocabulary + 114 rows) or, without one, `FIXED_TOKEN_IDS` over `BASE_VOCAB`."""
    ids = groma_token_id_kwargs(tokenizer)
    if tokenizer is None:
        vocab_size, bos, eos = BASE_VOCAB + 114, 1, 2
    else:
        vocab_size, bos, eos = len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
    kwargs = dict(
        vision_config=dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=518, patch_size=14),
        text_config=dict(
            model_type="llama",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=vocab_size,
            pad_token_id=ids["pad_token_id"],
            bos_token_id=bos,
            eos_token_id=eos,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
        ),
        image_size=112,
        proposer_d_model=32,
        proposer_encoder_layers=2,
        proposer_decoder_layers=2,
        proposer_attention_heads=4,
        proposer_ffn_dim=64,
        proposer_num_queries=20,
        region_gn_groups=4,
        region_pos_embed_dim=16,
        **ids,
        num_proxy_tokens=100,
    )
    kwargs.update(overrides)
    return GromaConfig(**kwargs)


def tiny_groma_processor(tokenizer, config: GromaConfig) -> GromaProcessor:
    """The processor matching `config`: `config.image_size` px input, its image-token and proxy-token counts."""
    size = config.image_size
    return GromaProcessor(
        GromaImageProcessor(size={"height": size, "width": size}),
        tokenizer,
        num_image_tokens=config.num_image_tokens,
        num_proxy_tokens=config.num_proxy_tokens,
    )


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A uint8 RGB noise image of the given size."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def tiny_groma_left_padded_batch():
    """A tiny random Groma (seed 0) and a batch of two prompts of different lengths, left-padded, with unused region
    pairs and random 112-px images: the mask and positions of a real batch."""
    from groundvlm.modeling.modeling_groma import GromaForConditionalGeneration
    from tests.groma.test_groma_model import left_pad, static_prompt

    torch.manual_seed(0)
    model = GromaForConditionalGeneration(tiny_groma_config()).eval()
    cfg = model.config
    ids, mask = left_pad([static_prompt(cfg), static_prompt(cfg, before=(1, 5, 6, 7, 9))], cfg.pad_token_id)
    return model, {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(2, 3, 112, 112)}
