"""Tiny tokenizers and BLIP-2 configs for the VPGTrans tests, built in code (no downloads).

Tokenizers follow each LLM family's special-token convention (OPT: </s> as BOS/EOS; LLaMA: <s>/</s>; T5: EOS only):
- OPT-style: word-level (like OPT's whole-word BPE pieces), `</s>` is both BOS and EOS, only BOS is added,
  `<pad>` = 1.
- LLaMA-style: sentencepiece-like Unigram with "▁" word prefixes, `<s>` BOS added, `</s>` EOS not added, no pad.
- T5-style: Unigram with "▁" prefixes, no BOS, `</s>` EOS appended, `<pad>` = 0, and a lone "▁" piece (id 3,
  as in T5) that appears when a word has no "▁word" piece.
"""

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AddedToken, Blip2Config, OPTConfig, PreTrainedTokenizerFast, T5Config

WORDS = ["a", "an", "red", "blue", "green", "star", "ring", "circle", "striped", "on", "the", "left", "two"]
SPACE = "\u2581"


def opt_tokenizer(extra_words=()):
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "\n": 4}
    for w in list(WORDS) + list(extra_words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _unigram(pieces, specials):
    vocab = [(s, 0.0) for s in specials] + [(p, -1.0) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    return tok


def llama_tokenizer():
    # "striped" has no "▁striped" piece: it splits into "▁str" + "iped" (2 tokens vs OPT's 1).
    words = [w for w in WORDS if w != "striped"]
    pieces = [SPACE + w for w in words] + [SPACE + "str", "iped", SPACE, "\n"]
    specials = ["<unk>", "<s>", "</s>"]
    tok = _unigram(pieces, specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def t5_tokenizer():
    # "blue" has only a bare "blue" piece: "▁blue" -> "▁" + "blue" (T5's lone-"▁" case);
    # "striped" splits into "▁str" + "iped".
    words = [w for w in WORDS if w not in ("blue", "striped")]
    specials = ["<pad>", "</s>", "<unk>"]
    pieces = [SPACE] + [SPACE + w for w in words] + ["blue", SPACE + "str", "iped"]
    tok = _unigram(pieces, specials)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def add_image_token(tokenizer):
    tokenizer.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids("<image>")


VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=16,
    patch_size=4,
    initializer_range=0.02,
)
QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def opt_text_config(vocab_size, hidden=24):
    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        ffn_dim=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        word_embed_proj_dim=hidden,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )


def t5_text_config(vocab_size, hidden=24):
    return T5Config(
        vocab_size=vocab_size,
        d_model=hidden,
        d_ff=2 * hidden,
        d_kv=hidden // 4,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
    )


def blip2_config(text_config, image_token_index, num_query_tokens=4, config_cls=Blip2Config, **kwargs):
    return config_cls(
        vision_config=dict(VISION),
        qformer_config=dict(QFORMER),
        text_config=text_config.to_dict(),
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_index,
        **kwargs,
    )


__all__ = ["WORDS", "opt_tokenizer", "llama_tokenizer", "t5_tokenizer", "add_image_token", "blip2_config"]


def tiny_vpgtrans_with_prompts(batch: int = 2):
    """A tiny OPT-based VPGTransModel (seed 0) and its processor's left-padded prompts for `batch` (≤ 2) random
    16x16 images."""
    import numpy as np
    from transformers import BlipImageProcessor

    from groundvlm.modeling import VPGTransConfig, VPGTransModel
    from groundvlm.processing import VPGTransProcessor

    tok = opt_tokenizer()
    image_token_index = add_image_token(tok)  # before len(tok): the vocabulary includes it
    config = blip2_config(opt_text_config(len(tok)), image_token_index, config_cls=VPGTransConfig)
    torch.manual_seed(0)
    model = VPGTransModel(config).eval()
    processor = VPGTransProcessor(BlipImageProcessor(size={"height": 16, "width": 16}), tok, num_query_tokens=4)
    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(2)]
    return model, dict(processor(images=images[:batch], text=["a red star on the left", "a ring"][:batch]))
