"""Toy text LMs: stand-ins for OPT (two sizes), LLaMA/Vicuna and Flan-T5, pretrained on toy-world text.

Each is an ordinary transformers model (`OPTForCausalLM`, `LlamaForCausalLM`, `T5ForConditionalGeneration`)
built from its family's config with the family's special-token ids, trained from scratch on the toy
corpus (recipes/toyworld/corpus.py) and saved with `save_pretrained` next to its tokenizer, so
`AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` + `AutoTokenizer` load it like a downloaded checkpoint.

Objectives follow how the real models are used by BLIP-2/VPGTrans:
- decoder-only (OPT, LLaMA): next-token prediction on `BOS text EOS` (the tokenizer adds the family's
  BOS; we append EOS so the LM learns to stop after a caption, an answer or a box);
- T5: prefix language modelling, as BLIP-2's Flan-T5 pretraining splits a caption into an encoder
  prefix and a decoder suffix. The split is after "Answer:" / "Short answer:" / "located at" when the
  text has one (so the decoder learns to produce answers and boxes), else at a random word boundary.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM, T5Config, T5ForConditionalGeneration

LM_NAMES = ("opt-small", "opt-base", "llama", "t5")
LM_FAMILY = {"opt-small": "opt", "opt-base": "opt", "llama": "llama", "t5": "t5"}

# The T5 prefix/suffix split points, longest first ("Short answer:" contains "answer:").
_SPLIT_MARKERS = ("Short answer:", "Answer:", "located at")


@dataclass(frozen=True)
class LMSize:
    """Architecture size of one toy LM (T5 uses `layers` encoder and `layers` decoder layers)."""

    hidden: int
    layers: int
    heads: int


def lm_model(name: str, tokenizer, size: LMSize, max_positions: int = 256):
    """A freshly initialised toy LM `name` (see LM_NAMES) whose vocabulary and special ids match `tokenizer`."""
    if name not in LM_NAMES:
        raise ValueError(f"unknown toy LM {name!r}; expected one of {LM_NAMES}")
    family = LM_FAMILY[name]
    if size.hidden % size.heads:
        raise ValueError(f"hidden={size.hidden} is not divisible by heads={size.heads}")
    vocab = len(tokenizer)
    if family == "opt":
        config = OPTConfig(
            vocab_size=vocab,
            hidden_size=size.hidden,
            word_embed_proj_dim=size.hidden,
            ffn_dim=4 * size.hidden,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            max_position_embeddings=max_positions,
            dropout=0.0,
            attention_dropout=0.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = OPTForCausalLM(config)
    elif family == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=size.hidden,
            intermediate_size=int(size.hidden * 8 / 3) // 8 * 8,  # LLaMA's 2/3 * 4d SwiGLU width
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=None,  # LLaMA ships without a pad token
        )
        model = LlamaForCausalLM(config)
    else:
        config = T5Config(
            vocab_size=vocab,
            d_model=size.hidden,
            d_kv=size.hidden // size.heads,
            d_ff=int(size.hidden * 8 / 3) // 8 * 8,
            num_layers=size.layers,
            num_decoder_layers=size.layers,
            num_heads=size.heads,
            feed_forward_proj="gated-gelu",  # Flan-T5 (T5 v1.1): gated GELU, untied output head
            tie_word_embeddings=False,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        model = T5ForConditionalGeneration(config)
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if family != "t5":
        gen.bos_token_id = tokenizer.bos_token_id
    return model


def t5_split(text: str, rng: random.Random) -> tuple[str, str]:
    """Split a text into (encoder prefix, decoder suffix) for T5 prefix-LM pretraining."""
    for marker in _SPLIT_MARKERS:
        at = text.find(marker)
        if at >= 0 and text[at + len(marker) :].strip():
            cut = at + len(marker)
            return text[:cut], text[cut:].strip()
    words = text.split()
    if len(words) < 2:
        return text, text
    cut = rng.randint(1, len(words) - 1)
    return " ".join(words[:cut]), " ".join(words[cut:])


def encode_examples(family: str, tokenizer, texts: list[str], seed: int = 0, max_length: int = 96) -> list[tuple]:
    """Token ids per example: `(ids,)` for decoder-only (BOS text EOS), `(input_ids, label_ids)` for T5."""
    if family == "t5":
        rng = random.Random(seed)
        pairs = [t5_split(t, rng) for t in texts]
        src = tokenizer([p for p, _ in pairs], truncation=True, max_length=max_length).input_ids
        tgt = tokenizer([s for _, s in pairs], truncation=True, max_length=max_length).input_ids  # ends in </s>
        return list(zip(src, tgt))
    ids = tokenizer(texts, truncation=True, max_length=max_length - 1).input_ids
    return [(seq + [tokenizer.eos_token_id],) for seq in ids]


def collate(family: str, tokenizer, examples: list[tuple]) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids/attention_mask [B, T] and labels [B, T'] with -100 on padding."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def pad_to(seqs, value):
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs])

    src = [e[0] for e in examples]
    batch = {"input_ids": pad_to(src, pad), "attention_mask": pad_to([[1] * len(s) for s in src], 0)}
    batch["labels"] = pad_to([e[-1] for e in examples], -100)
    return batch


def pretrain_lm(
    name: str,
    model,
    tokenizer,
    texts: list[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = False,
) -> dict:
    """Train `model` on `texts` for `steps` batches (drawn with replacement); returns {"final_loss", "losses"}."""
    if not texts:
        raise ValueError("pretrain_lm needs a non-empty list of texts")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    family = LM_FAMILY[name]
    examples = encode_examples(family, tokenizer, texts, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    losses = []
    bar = tqdm(range(steps), desc=f"LM {name}", unit="step")
    for _ in bar:
        idx = torch.randint(0, len(examples), (batch_size,), generator=gen).tolist()
        batch = {k: v.to(device) for k, v in collate(family, tokenizer, [examples[i] for i in idx]).items()}
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return {"final_loss": float(np.mean(losses[-max(1, steps // 10) :])), "losses": losses}


@torch.no_grad()
def evaluate_lm(name: str, model, tokenizer, texts: list[str], batch_size: int = 64, device: str = "cpu") -> dict:
    """Teacher-forced loss and next-token accuracy on `texts` (for T5: on the decoder suffix)."""
    family = LM_FAMILY[name]
    examples = encode_examples(family, tokenizer, texts, seed=1)
    model.to(device).eval()
    total_loss, correct, count = 0.0, 0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(family, tokenizer, examples[i : i + batch_size]).items()}
        logits = model(**batch).logits.float()
        labels = batch["labels"]
        if family != "t5":  # causal: position t predicts token t+1
            logits, labels = logits[:, :-1], labels[:, 1:]
        mask = labels != -100
        total_loss += torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum").item()
        correct += (logits.argmax(-1)[mask] == labels[mask]).sum().item()
        count += mask.sum().item()
    return {"loss": total_loss / max(count, 1), "next_token_accuracy": correct / max(count, 1)}


@torch.no_grad()
def box_syntax_rate(name: str, model, tokenizer, prompts: list[str], codec, device: str = "cpu") -> float:
    """Fraction of greedy continuations of `prompts` (ending in "located at") that `codec` (a `PinGridCodec`)
    decodes as a box: the continuation is read as PIN's processor reads text after "located at"."""
    family = LM_FAMILY[name]
    model.to(device).eval()
    ok = 0
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
        new = out[0] if family == "t5" else out[0, enc.input_ids.shape[1] :]
        ok += codec.decode(" " + tokenizer.decode(new, skip_special_tokens=True).lstrip())[1]
    return ok / max(len(prompts), 1)
