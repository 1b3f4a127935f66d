"""Can a (toy) LM do an in-context lookup — the step both PIN and Groma leave to their frozen or tuned LLM?

Groma's REC answer copies the `<r_j>` token that stands in front of the region matching a phrase; PIN's LLM must pick,
from a prefix describing several objects, the position of the one the prompt names. Both are in-context lookups: find
the item that matches the query, copy what is bound to it. A pretrained LLM brings this; this probe measures whether a
given LM has it or learns it by fine-tuning on text alone:

    3 a red star 7 a blue circle 1 a green square. the blue circle is 7        (label first, as Groma's `<r_j><region>`)
    a red star 3 a blue circle 7 a green square 1. the blue circle is 7        (`--label-last`: classic induction)

(2–8 items of the toy world's colour-shape names, distinct single-digit labels; chance = the mean of 1/items = 0.245.)
It reports the held-out accuracy of the label token before and during fine-tuning (AdamW, loss on every token or,
with `--answer-only`, on the label only).

    python benchmarks/lm_lookup_probe.py --lm recipes/toy_checkpoints/lm-llama --steps 1500 [--answer-only]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from groundvlm.recipes.toyworld.objects import COLOURS, SHAPES

NAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def lookup_text(
    rng: random.Random, min_items: int = 2, max_items: int = 8, label_last: bool = False
) -> tuple[str, str, int]:
    """(context and question, answer label, number of items)."""
    k = rng.randint(min_items, max_items)
    items, labels = rng.sample(NAMES, k), rng.sample(range(10), k)
    q = rng.randrange(k)
    pattern = "a {name} {label}" if label_last else "{label} a {name}"
    context = " ".join(pattern.format(label=label, name=name) for label, name in zip(labels, items))
    return f"{context}. the {items[q]} is", f" {labels[q]}", k


def chance(n: int = 4000, seed: int = 0, max_items: int = 8) -> float:
    rng = random.Random(seed)
    return sum(1 / lookup_text(rng, max_items=max_items)[2] for _ in range(n)) / n


@torch.no_grad()
def accuracy(model, tok, n: int, seed: int = 123, label_last: bool = False, max_items: int = 8) -> float:
    """Share of held-out lookups whose label token is the LM's greedy next token after the full question."""
    rng, hits = random.Random(seed), 0
    was_training = model.training
    model.eval()
    for _ in range(n):
        question, answer, _ = lookup_text(rng, max_items=max_items, label_last=label_last)
        ids = tok(question + answer, return_tensors="pt").input_ids
        hits += int(model(ids[:, :-1]).logits[0, -1].argmax() == ids[0, -1])
    model.train(was_training)
    return hits / n


def batch(tok, rng: random.Random, size: int, answer_only: bool, label_last: bool = False, max_items: int = 8) -> dict:
    texts = [q + a for q, a, _ in (lookup_text(rng, max_items=max_items, label_last=label_last) for _ in range(size))]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    if answer_only:  # right padding: the label is each row's last real token
        last = enc.attention_mask.sum(1) - 1
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[torch.arange(len(last)), last] = True
        labels = labels.masked_fill(~keep, -100)
    return {**enc, "labels": labels}


def probe(
    lm: str,
    steps: int,
    lr: float,
    batch_size: int,
    answer_only: bool,
    eval_every: int,
    eval_n: int,
    label_last: bool,
    max_items: int = 8,
) -> dict:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(lm)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(lm, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng, curve, t0 = (
        random.Random(0),
        [[0, accuracy(model, tok, eval_n, label_last=label_last, max_items=max_items), None]],
        time.time(),
    )
    print(f"step 0: accuracy {curve[0][1]:.3f} (chance {chance(max_items=max_items):.3f})", flush=True)
    model.train()
    for step in range(1, steps + 1):
        loss = model(**batch(tok, rng, batch_size, answer_only, label_last, max_items)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % eval_every == 0 or step == steps:
            curve.append(
                [step, accuracy(model, tok, eval_n, label_last=label_last, max_items=max_items), round(loss.item(), 4)]
            )
            print(
                f"step {step}: accuracy {curve[-1][1]:.3f}, loss {loss.item():.3f}, {time.time() - t0:.0f} s",
                flush=True,
            )
    return {
        "lm": lm,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "answer_only": answer_only,
        "label_last": label_last,
        "max_items": max_items,
        "chance": round(chance(max_items=max_items), 4),
        "accuracy_curve": curve,
        "seconds": round(time.time() - t0, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--lm", default="recipes/toy_checkpoints/lm-llama", help="a causal LM folder with its tokenizer"
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--answer-only", action="store_true", help="loss on the label token only")
    parser.add_argument("--label-last", action="store_true", help="the label after the item (classic induction)")
    parser.add_argument("--max-items", type=int, default=8, help="items per list: 2 to this (default 8)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 0 or args.batch_size < 1 or args.eval_every < 1 or args.eval_n < 1:
        parser.error("--steps must be >= 0 and --batch-size, --eval-every, --eval-n >= 1")
    if not 2 <= args.max_items <= 10:
        parser.error(f"--max-items must be 2 to 10 (ten single-digit labels), got {args.max_items}")
    result = probe(
        args.lm,
        args.steps,
        args.lr,
        args.batch_size,
        args.answer_only,
        args.eval_every,
        args.eval_n,
        args.label_last,
        args.max_items,
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
