"""Toy tokenizers, trained in-process, one per LM family, with that family's special-token conventions.

They stand in for the OPT, LLaMA and Flan-T5 tokenizers so that everything that depends on tokenizer
conventions is exercised for real: VPGTrans's word-embedding converter pairs two tokenizations of one
caption position by position and keeps it only when both have the same length (reference §A2), after
dropping the OPT BOS and the T5 EOS and the lone T5 "▁" piece (id 3). The three tokenizers therefore
differ the way the real ones do:

| family | model / pre-tokenizer                                   | ids 0..3                     | added to a text        |
|--------|---------------------------------------------------------|------------------------------|------------------------|
| opt    | byte-level BPE (GPT-2 style, digit runs kept together)  | <s> <pad> </s> <unk>         | `</s>` prepended (BOS) |
| llama  | sentencepiece-like BPE, "▁" marker, digits split, .,?!:; alone | <unk> <s> </s> (no pad)      | `<s>` prepended        |
| t5     | sentencepiece-like BPE, "▁" marker, punctuation isolated| <pad> </s> <unk> "▁"         | `</s>` appended, no BOS|

LLaMA splits every digit (sentencepiece `split_digits`), OPT keeps digit runs, and T5 isolates punctuation
so "[" comes after a lone "▁" as in the real T5 vocabulary; box strings such as "[14,28,70,112]" thus pair
between OPT and T5 but never with LLaMA, and captions pair or not depending on how each vocabulary split
their words. Grid tick numbers become whole tokens in OPT and T5 because the toy corpus is full of them.

The LLaMA- and T5-style tokenizers cover printable ASCII and map anything else to `<unk>` (the real ones
have byte fallback or a larger alphabet; the toy world's text is ASCII). The tokenizers are wrapped as
plain `PreTrainedTokenizerFast` (`TokenizersBackend` in transformers 5) so `AutoTokenizer` loads the
exact `tokenizer.json` we trained, with no family class rebuilding its own pipeline on load.
"""

from __future__ import annotations

import json
import string
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

FAMILIES = ("opt", "llama", "t5")

# The toy language is closed (about a hundred words), so BPE trained to the end "saturates": every word
# becomes one token and all three tokenizers would split every caption alike. Real tokenizers were trained
# on other text than ours and split rarer words, each differently; we mimic that by keeping only a fraction
# of the saturated vocabulary for the LLaMA- and T5-style ones (their last, rarest merges are dropped).
# Measured on the toy corpus (200 and 1,000 scenes): about 40% of captions then pair with OPT's.
VOCAB_FRACTION = {"opt": 1.0, "llama": 0.82, "t5": 0.80}
_SATURATING_VOCAB = 8192

# Printable ASCII plus newline: the alphabet every tokenizer must be able to represent without <unk>.
_ASCII_ALPHABET = sorted(set(string.printable) - set("\t\r\x0b\x0c"))

_SPECIALS = {
    # token strings in id order, then the special-token roles of the wrapped tokenizer
    "opt": (["<s>", "<pad>", "</s>", "<unk>"], dict(bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")),
    "llama": (["<unk>", "<s>", "</s>"], dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")),
    "t5": (["<pad>", "</s>", "<unk>"], dict(eos_token="</s>", pad_token="<pad>", unk_token="<unk>")),
}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown tokenizer family {family!r}; expected one of {FAMILIES}")


def _pipeline(family: str) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained `Tokenizer` with the family's model, pre-tokenizer and decoder, and its trainer."""
    specials = _SPECIALS[family][0]
    if family == "opt":
        tok = Tokenizer(models.BPE())
        # OPT reuses GPT-2's byte-level BPE: no prefix space, so a text's first word has no "Ġ".
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        # LLaMA marks only the first word of a text with a leading "▁" ("first"); T5 always does.
        scheme = "first" if family == "llama" else "always"
        metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        if family == "llama":
            # Digits one by one (sentencepiece split_digits); sentence punctuation on its own, while
            # brackets may still merge with "▁" ("▁[" as in LLaMA's vocabulary).
            extra = [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Split(Regex(r"[.,?!:;]"), behavior="isolated"),
            ]
        else:
            extra = [pre_tokenizers.Punctuation(behavior="isolated")]
        tok.pre_tokenizer = pre_tokenizers.Sequence([metaspace, *extra])
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        alphabet = _ASCII_ALPHABET + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=_SATURATING_VOCAB,
        special_tokens=specials,
        initial_alphabet=alphabet,
        min_frequency=2,
        show_progress=False,
    )
    return tok, trainer


def _t5_lone_metaspace_at_id_3(tok: Tokenizer) -> Tokenizer:
    """Swap ids so the lone "▁" piece has id 3, as in the real T5 vocabulary (VPGTrans drops id 3)."""
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    current = vocab["▁"]
    if current != 3:
        other = next(t for t, i in vocab.items() if i == 3)
        vocab["▁"], vocab[other] = 3, current
    return Tokenizer.from_str(json.dumps(state))


def train_tokenizer(family: str, texts: Iterable[str], vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """Train a `family` ("opt" | "llama" | "t5") tokenizer on `texts` and wrap it for transformers.

    `vocab_size` (default: the family's VOCAB_FRACTION of the saturated vocabulary) caps the vocabulary.
    Returns a fast tokenizer whose `__call__` adds the family's BOS/EOS (see the module table) and whose
    `save_pretrained` output loads with `AutoTokenizer.from_pretrained`.
    """
    _check_family(family)
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("train_tokenizer needs a non-empty list of strings to train on")
    if vocab_size is not None and vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size} is too small: the alphabet alone needs up to 261 entries")
    tok, trainer = _pipeline(family)
    tok.train_from_iterator(texts, trainer=trainer)
    if vocab_size is None and VOCAB_FRACTION[family] < 1.0:
        vocab_size = int(tok.get_vocab_size() * VOCAB_FRACTION[family])
    if vocab_size is not None and vocab_size < tok.get_vocab_size():
        tok, trainer = _pipeline(family)
        trainer.vocab_size = vocab_size
        tok.train_from_iterator(texts, trainer=trainer)
    if family == "t5":
        tok = _t5_lone_metaspace_at_id_3(tok)

    specials, roles = _SPECIALS[family]
    ids = {t: tok.token_to_id(t) for t in specials}
    if family == "opt":
        # OPT prepends `</s>` (its BOS is `</s>`, id 2) and appends nothing.
        post = processors.TemplateProcessing(
            single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", ids["</s>"])]
        )
        # ByteLevel offsets need trimming, then the template adds the BOS.
        tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), post])
    elif family == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ids["<s>"])]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", ids["</s>"])]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **roles)


def paired_token_ids(src, tgt, text: str) -> list[tuple[int, int]] | None:
    """VPGTrans's cross-tokenizer pairing of one text (reference §A2), or None when it does not pair.

    Both tokenizations keep their special tokens, except that a T5 target drops its EOS and its lone "▁"
    (id 3) and an OPT source then drops its BOS; the text pairs only if the two id lists are equally long.
    """
    a = src(text).input_ids
    b = tgt(text).input_ids
    if tgt.bos_token is None and tgt.eos_token == "</s>":  # T5-style target
        b = [i for i in b[:-1] if i != 3]
        if src.bos_token is not None:
            a = a[1:]
    if len(a) != len(b):
        return None
    return list(zip(a, b))
