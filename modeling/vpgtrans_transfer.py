"""VPGTrans transfer pieces: token pairing, word-embedding converter, projector merge, target-model construction.

VPGTrans (Zhang et al., NeurIPS 2023, §3.2 Stage-1 (b); reference: VPGTrans train_linear_proj_opt_and_llama.py)
initialises the projector of a *target* LLM from the projector of a *source* BLIP-2 model: a linear "word converter"
g is trained to map source input-word embeddings onto target ones (1 - cosine loss, over tokens that both tokenizers
produce for the same caption), then the new projector is g applied after the source projector. Each step is one
function here; the recipe strings them together:

    pairs = pair_caption_tokens(captions, source_tokenizer, target_tokenizer)
    converter = train_word_converter(input_word_embeddings(source.language_model),
                                     input_word_embeddings(target_lm), pairs)
    target = build_target_model(source, target_lm, target_tokenizer, converter)   # converter=None: 'inherit'
"""

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AddedToken, Blip2ForConditionalGeneration, PreTrainedModel

from .configuration_vpgtrans import VPGTransConfig
from .modeling_vpgtrans import VPGTransModel

TOKENIZER_FAMILIES = ("opt", "llama", "t5")


def pre_caption(caption: str, max_words: int | None = None) -> str:
    """The reference caption normalisation: lower-case, `.!"()*#:;~` -> space, whitespace runs -> one space,
    stripped; optionally cut to `max_words` words (LAVIS `blip_caption` uses 50)."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n").strip(" ")
    if max_words is not None:
        words = caption.split(" ")
        if len(words) > max_words:
            caption = " ".join(words[:max_words])
    return caption


def _special_layout(tokenizer) -> tuple[bool, bool]:
    """(adds a BOS in front, adds an EOS at the end) for this tokenizer's default `__call__`."""
    with_specials = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if not without:
        raise ValueError("The tokenizer encodes 'a' to nothing; cannot read its special-token layout.")
    start = with_specials.index(without[0]) if without[0] in with_specials else 0
    adds_bos = start > 0
    adds_eos = len(with_specials) - start > len(without)
    return adds_bos, adds_eos


def guess_tokenizer_family(tokenizer) -> str:
    """'opt' (BOS = EOS = `</s>`, BOS only), 'llama' (`<s>` BOS, no EOS) or 't5' (no BOS, `</s>` EOS), read
    from what the tokenizer adds around a text. Raises ValueError for any other layout (pass the family)."""
    adds_bos, adds_eos = _special_layout(tokenizer)
    if adds_bos and not adds_eos:
        return "opt" if tokenizer.bos_token == tokenizer.eos_token else "llama"
    if adds_eos and not adds_bos:
        return "t5"
    raise ValueError(
        f"Cannot tell the tokenizer family (adds BOS: {adds_bos}, adds EOS: {adds_eos}); pass "
        f"source_family/target_family, one of {TOKENIZER_FAMILIES}."
    )


@dataclass
class TokenPairs:
    """Captions both tokenizers split into the same number of tokens, paired position by position.

    `pairs[i] = (source_ids, target_ids)`, equal lengths. `same_tokenizer` marks the within-family case (one
    tokenizer, every token paired with itself), which the reference trains for 5 epochs instead of 8."""

    pairs: list[tuple[list[int], list[int]]]
    same_tokenizer: bool
    num_captions: int

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s, _ in self.pairs)


def _strip_for_pairing(ids: list[int], family: str, other: str, lone_space_id: int | None) -> list[int]:
    # Reference rules (tools/linear_proj): OPT<->LLaMA keep both BOS (OPT `</s>` pairs with LLaMA `<s>`);
    # OPT<->T5 drop the OPT BOS, drop the T5 EOS and T5's lone "▁" pieces. LLaMA<->T5 has no reference
    # script; it follows the same rule as OPT<->T5 (LLaMA, like OPT, has a BOS and no EOS).
    if family == "t5" and other != "t5":
        ids = ids[:-1]
        if lone_space_id is not None:
            ids = [i for i in ids if i != lone_space_id]
    elif family != "t5" and other == "t5":
        ids = ids[1:]
    return ids


def pair_caption_tokens(
    captions: Sequence[str],
    source_tokenizer,
    target_tokenizer,
    *,
    source_family: str | None = None,
    target_family: str | None = None,
    normalize: bool = True,
) -> TokenPairs:
    """Pair source and target token ids over `captions` with the reference's same-length rule (VPGTrans train_linear_proj_opt_and_llama.py).

    Each caption (through `pre_caption` when `normalize`) is tokenized by both tokenizers (with their special
    tokens, then the BOS/EOS rules of `_strip_for_pairing`); it is kept only if both id lists have the same
    length, and the ids are then paired by position. Tokenizers with identical vocabularies (within one
    family) pair every token with itself. Families default to `guess_tokenizer_family`. To reproduce the
    reference exactly, load OPT/LLaMA tokenizers with `use_fast=False` (the reference did).

    Raises ValueError when no caption pairs (the tokenizers share no pairable captions).
    """
    if isinstance(captions, str):
        raise TypeError("captions must be a sequence of strings, not one string.")
    texts = [pre_caption(c) if normalize else c for c in captions]
    same = source_tokenizer is target_tokenizer or source_tokenizer.get_vocab() == target_tokenizer.get_vocab()
    if same:
        pairs = [(ids, list(ids)) for ids in (source_tokenizer(t)["input_ids"] for t in texts) if ids]
        if not pairs:
            raise ValueError("No captions to pair (the caption list is empty or encodes to nothing).")
        return TokenPairs(pairs=pairs, same_tokenizer=True, num_captions=len(texts))

    src_family = source_family or guess_tokenizer_family(source_tokenizer)
    tgt_family = target_family or guess_tokenizer_family(target_tokenizer)
    for name, fam in (("source_family", src_family), ("target_family", tgt_family)):
        if fam not in TOKENIZER_FAMILIES:
            raise ValueError(f"{name}={fam!r}; expected one of {TOKENIZER_FAMILIES}.")

    def lone_space(tokenizer):
        vocab = tokenizer.get_vocab()
        return vocab.get("\u2581")

    src_space, tgt_space = lone_space(source_tokenizer), lone_space(target_tokenizer)
    pairs = []
    for text in texts:
        src = _strip_for_pairing(source_tokenizer(text)["input_ids"], src_family, tgt_family, src_space)
        tgt = _strip_for_pairing(target_tokenizer(text)["input_ids"], tgt_family, src_family, tgt_space)
        if src and len(src) == len(tgt):
            pairs.append((src, tgt))
    if not pairs:
        raise ValueError(
            f"None of the {len(texts)} captions tokenizes to the same number of tokens under the source "
            f"({src_family}) and target ({tgt_family}) tokenizers, so no word pairs exist to train the converter. "
            "Check that the target tokenizer belongs to an LLM for the same language, and the family arguments."
        )
    # Two copies of one tokenizer (e.g. one already holding `<image>`) give identical ids: the within-family case.
    same = src_family == tgt_family and all(s == t for s, t in pairs)
    return TokenPairs(pairs=pairs, same_tokenizer=same, num_captions=len(texts))


class WordConverter(nn.Linear):
    """g_w: source word-embedding space [d_src] -> target word-embedding space [d_tgt] (Linear with bias)."""

    def __init__(self, source_dim: int, target_dim: int):
        super().__init__(source_dim, target_dim, bias=True)


def cosine_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(prediction, target)) over rows; [N, d] x [N, d] -> scalar (the reference's loss)."""
    return (1.0 - F.cosine_similarity(prediction, target, dim=-1)).mean()


def input_word_embeddings(language_model: PreTrainedModel) -> torch.Tensor:
    """The LLM's input word-embedding table [vocab, d] as the reference reads it (detached, fp32): OPT models
    with a `project_in` (e.g. OPT-350m) are pushed through it, T5 uses the (shared) encoder embeddings."""
    weight = language_model.get_input_embeddings().weight.detach().float()
    decoder = getattr(getattr(language_model, "model", None), "decoder", None)
    project_in = getattr(decoder, "project_in", None)
    if project_in is not None:
        # F.linear on fp32 copies: `project_in.float()` would convert the caller's module in place.
        bias = None if project_in.bias is None else project_in.bias.detach().float()
        weight = F.linear(weight, project_in.weight.detach().float(), bias)
    return weight


def _as_table(embeddings, name: str) -> torch.Tensor:
    if isinstance(embeddings, nn.Embedding):
        embeddings = embeddings.weight
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
        raise TypeError(f"{name} must be an nn.Embedding or a [vocab, dim] tensor.")
    return embeddings.detach().float()


def train_word_converter(
    source_embeddings: torch.Tensor | nn.Embedding,
    target_embeddings: torch.Tensor | nn.Embedding,
    pairs: TokenPairs,
    *,
    epochs: int | None = None,
    lr: float = 5.0,
    captions_per_batch: int = 4096,
    seed: int = 0,
    device: str | torch.device | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> WordConverter:
    """Train the word converter as the reference (VPGTrans train_linear_proj_opt_and_llama.py).

    Args:
        source_embeddings, target_embeddings: frozen input-embedding tables [V_src, d_src], [V_tgt, d_tgt]
            (see `input_word_embeddings`).
        pairs: from `pair_caption_tokens`.
        epochs: default 5 within one tokenizer family, 8 across families (the reference scripts).
        lr: plain SGD (no momentum, no weight decay), 5.0; divided by 10 every 10 epochs (as the reference,
            which therefore never decays within its 5-8 epochs).
        captions_per_batch: 4096 captions per step, flattened to one token-level batch; shuffled each epoch.
        on_step: called as `on_step(epoch, step, loss)` after every optimizer step.

    Returns the trained `WordConverter` on CPU in eval mode.
    """
    if not isinstance(pairs, TokenPairs):
        raise TypeError("pairs must be the TokenPairs returned by pair_caption_tokens.")
    source = _as_table(source_embeddings, "source_embeddings")
    target = _as_table(target_embeddings, "target_embeddings")
    max_src = max(max(s) for s, _ in pairs.pairs)
    max_tgt = max(max(t) for _, t in pairs.pairs)
    if max_src >= source.shape[0] or max_tgt >= target.shape[0]:
        raise ValueError(
            f"Token ids exceed the embedding tables: source id {max_src} vs {source.shape[0]} rows, target id "
            f"{max_tgt} vs {target.shape[0]} rows. Were the tokenizers and embeddings swapped?"
        )
    if epochs is None:
        epochs = 5 if pairs.same_tokenizer else 8
    device = torch.device(device) if device is not None else source.device
    source, target = source.to(device), target.to(device)

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        converter = WordConverter(source.shape[1], target.shape[1])
    converter.to(device).train()
    optimizer = torch.optim.SGD(converter.parameters(), lr=lr)
    src_rows = [torch.tensor(s, dtype=torch.long) for s, _ in pairs.pairs]
    tgt_rows = [torch.tensor(t, dtype=torch.long) for _, t in pairs.pairs]
    for epoch in range(epochs):
        order = torch.randperm(len(src_rows), generator=generator).tolist()
        for step, start in enumerate(range(0, len(order), captions_per_batch)):
            batch = order[start : start + captions_per_batch]
            src_ids = torch.cat([src_rows[i] for i in batch]).to(device)
            tgt_ids = torch.cat([tgt_rows[i] for i in batch]).to(device)
            loss = cosine_loss(converter(source[src_ids]), target[tgt_ids])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(epoch, step, loss.item())
        if (epoch + 1) % 10 == 0:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] / 10
    return converter.cpu().eval()


def merge_projector(converter: nn.Linear, source_projection: nn.Linear) -> nn.Linear:
    """The target projector = converter applied after the source projector, folded into one Linear.

    With converter x -> W_c x + b_c ([d_tgt, d_src]) and source projector q -> W_s q + b_s ([d_src, d_q]):
    W_t = W_c @ W_s and b_t = W_c @ b_s + b_c, so merged(q) == converter(source_projection(q)).
    This is the reference *code's* convention (VPGTrans train_linear_proj_opt_and_llama.py). The paper's Eq. 2, f_t(x) = f_s(g_w(x)), does not
    type-check (g_w maps word space to word space), and the released transfer checkpoints were made by the code.
    Returns an `nn.Linear(d_q, d_tgt)` with the source projector's dtype and device.
    """
    if not isinstance(converter, nn.Linear) or not isinstance(source_projection, nn.Linear):
        raise TypeError("merge_projector takes two nn.Linear modules (converter, source_projection).")
    if converter.in_features != source_projection.out_features:
        raise ValueError(
            f"The converter maps d={converter.in_features} embeddings but the source projector outputs "
            f"d={source_projection.out_features}: it was trained for another source LLM."
        )
    with torch.no_grad():
        w_c = converter.weight.detach().float().to(source_projection.weight.device)
        b_c = converter.bias.detach().float().to(w_c.device) if converter.bias is not None else 0.0
        w_s = source_projection.weight.detach().float()
        b_s = source_projection.bias.detach().float() if source_projection.bias is not None else None
        merged = nn.Linear(source_projection.in_features, converter.out_features, bias=True)
        merged.weight.copy_(w_c @ w_s)
        merged.bias.copy_((w_c @ b_s if b_s is not None else 0.0) + b_c)
    return merged.to(device=source_projection.weight.device, dtype=source_projection.weight.dtype)


def newline_token_id(tokenizer) -> int:
    """The id the reference stops generation on: the last id of "\\n" tokenized without special tokens."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if not ids or ids[-1] == tokenizer.unk_token_id:
        raise ValueError(f'The tokenizer cannot encode "\\n" (got {ids}); decoder-only VPGTrans stops on it.')
    return ids[-1]


def build_target_model(
    source: Blip2ForConditionalGeneration,
    target_lm: PreTrainedModel,
    target_tokenizer,
    converter: nn.Linear | None = None,
    *,
    image_token: str = "<image>",
) -> VPGTransModel:
    """A target VL-LLM: the source's VPG (vision_model incl. its post-LayerNorm = LAVIS `ln_vision`, qformer,
    query_tokens) copied, the target LLM plugged in, and the projector either merged from `converter`
    (VPGTrans) or freshly initialised like `nn.Linear` (the paper's 'inherit' baseline, converter=None).

    `<image>` is added to `target_tokenizer` when missing and the LLM's embeddings grow to cover it. For
    decoder-only LLMs the generation config stops on "\\n", as the reference. The source is not modified.
    """
    if not isinstance(source, Blip2ForConditionalGeneration):
        raise TypeError("source must be a VPGTransModel (or transformers' Blip2ForConditionalGeneration).")
    if not isinstance(target_lm, PreTrainedModel):
        raise TypeError("target_lm must be a transformers PreTrainedModel (a causal or seq2seq LM).")
    target_hidden = target_lm.get_input_embeddings().embedding_dim
    source_proj = source.language_projection
    if converter is not None:
        if not isinstance(converter, nn.Linear):
            raise TypeError("converter must be an nn.Linear (a WordConverter).")
        if converter.in_features != source_proj.out_features or converter.out_features != target_hidden:
            raise ValueError(
                f"Converter shape {converter.in_features}->{converter.out_features} does not fit source LLM "
                f"hidden {source_proj.out_features} -> target LLM hidden {target_hidden}."
            )

    if image_token not in target_tokenizer.get_vocab():
        target_tokenizer.add_tokens([AddedToken(image_token, normalized=False, special=True)], special_tokens=True)
    image_token_index = target_tokenizer.convert_tokens_to_ids(image_token)
    if image_token_index >= target_lm.get_input_embeddings().num_embeddings:
        target_lm.resize_token_embeddings(len(target_tokenizer))

    src_cfg = source.config
    config = VPGTransConfig(
        vision_config=copy.deepcopy(src_cfg.vision_config),
        qformer_config=copy.deepcopy(src_cfg.qformer_config),
        text_config=copy.deepcopy(target_lm.config),
        num_query_tokens=src_cfg.num_query_tokens,
        image_text_hidden_size=src_cfg.image_text_hidden_size,
        image_token_index=image_token_index,
        initializer_factor=src_cfg.initializer_factor,
        initializer_range=src_cfg.initializer_range,
        init_query_tokens_std=getattr(src_cfg, "init_query_tokens_std", None),
    )
    # Build the shell on the meta device (no memory, no random init of a second LLM), then plug in real modules.
    with torch.device("meta"):
        target = VPGTransModel(config)
    target.vision_model = copy.deepcopy(source.vision_model)
    target.qformer = copy.deepcopy(source.qformer)
    target.query_tokens = nn.Parameter(source.query_tokens.detach().clone())
    if converter is not None:
        target.language_projection = merge_projector(converter, source_proj)
    else:
        target.language_projection = nn.Linear(source_proj.in_features, target_hidden).to(
            device=source_proj.weight.device, dtype=source_proj.weight.dtype
        )
    target.language_model = target_lm
    leftover = [n for n, t in list(target.named_parameters()) + list(target.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"build_target_model left tensors on the meta device: {leftover[:5]}")

    generation_config = getattr(target_lm, "generation_config", None)
    if generation_config is not None:
        target.generation_config = copy.deepcopy(generation_config)
    if not target_lm.config.is_encoder_decoder:
        target.generation_config.eos_token_id = newline_token_id(target_tokenizer)
        if target.generation_config.pad_token_id is None:
            target.generation_config.pad_token_id = target_tokenizer.pad_token_id or target_tokenizer.eos_token_id
    return target


__all__ = [
    "TOKENIZER_FAMILIES",
    "TokenPairs",
    "WordConverter",
    "build_target_model",
    "cosine_loss",
    "guess_tokenizer_family",
    "input_word_embeddings",
    "merge_projector",
    "newline_token_id",
    "pair_caption_tokens",
    "pre_caption",
    "train_word_converter",
]
