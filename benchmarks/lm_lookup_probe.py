"""Can a (toy) LM do an in-context lookup — the step both PIN and Groma leave to their frozen or tuned LLM?

Groma's REC answer copies the `<r_j>` token that stands in front of the region matching a phrase; PIN's LLM must pick,
from a prefix describing several objects, the position of the one the prompt names. Both are in-context lookups: find
the item that matches the query, copy what is bound to it. A pretrained LLM brings this; this probe measures whether a
given LM has it or learns it by fine-tuning on text alone:

    3 a red star 7 a blue circle 1 a green square. the blue circle is 7        (label first, as Groma's `<r_j><region>`)
    a red star 3 a blue circle 7 a green square 1. the blue circle is 7        (`--label-last`: classic induction)

(2–8 items of the toy world's colour-shape names, distinct single-digit labels; chance = the mean of 1/items = 0.245.)
It reports the held-out accuracy of the label token before and during fine-tuning (AdamW, linear warm-up, loss on
every token or, with `--answer-only`, on the labels only). Levers that make the signal denser or the task easier:
`--queries N` (up to N items asked per training text, never all of them, the earlier ones answered, as in multi-query
associative recall; accuracy stays on one), `--copula-free P` (a share of questions without "is": label last, the
answer then follows the name as in the context, so plain copying finds it), `--single-token` (a shape named, a colour as its label: one token
each, so that label last without "is" is a first-order copy), `--repeat-mix P` (a share of the batch that is a run
repeated twice, from which induction heads form; the copy accuracy is reported too), `--corpus-mix P` (replay of the
toy LM corpus, with `--save` to keep the taught LM), and a fresh model of another size (`--random-init --hidden-size
--num-hidden-layers`). `--box-labels` asks PIN's own question with boxes as labels; `--curriculum FORM:STEPS ...` trains
through several forms in order (`FORMS`, easiest first) and scores each stage on its own form.
`benchmarks/lm_lookup_probe_gpu.sh` runs seven variants side by side on one GPU, `lm_lookup_curriculum_gpu.sh` three
curricula.

    python benchmarks/lm_lookup_probe.py --lm recipes/toy_checkpoints/lm-llama --steps 1500 [--answer-only]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from groundvlm.recipes.toyworld.objects import COLOURS, SHAPES

NAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
# One-token labels for two-word names (`word_labels`): ten words the toy LLaMA tokenizer keeps whole ("▁answer") that
# name no colour or shape — as Groma's `<r_j>`, the label is one token, the key (a name) two.
WORD_LABELS = ["answer", "check", "dotted", "image", "left", "located", "many", "object", "shape", "there"]
# One token per name (`fused_names`, added to the tokenizer): in the context each item is a single key position right
# after its label, as Groma's `<r_j><region>` pair, while the question names it in two words.
FUSED_NAMES = [f"<{name.replace(' ', '_')}>" for name in NAMES]


def lookup_text(
    rng: random.Random,
    min_items: int = 2,
    max_items: int = 8,
    label_last: bool = False,
    queries: int = 1,
    copula_free: float = 0.0,
    single_token: bool = False,
    box_labels: bool = False,
    digit_labels: bool = False,
    word_labels: bool = False,
    fused_names: bool = False,
    fused_question: bool = False,
) -> tuple[str, str, int]:
    """(context and question, answer label, number of items). With `queries` > 1 the text asks that many distinct
    items (as many as there are, at most), the earlier ones answered: "... . the blue circle is 7. the red star is".
    With probability `copula_free` a text asks without "is" ("... . the blue circle"): label last, the answer then
    follows the name as in the context, and plain copying (induction) finds it. `single_token`: one-token names and
    labels (a shape named, a colour as its label: "star red circle blue. the circle is blue"), so that, label last and
    without "is", the answer is the token right after the name's earlier occurrence — a first-order copy.
    `box_labels`: the labels are PIN grid boxes and the question is PIN's prompt, "a red star [14,28,70,112] a blue
    circle [0,7,35,56]. In the image is a blue circle located at" -> " [0,7,35,56]" (several tokens; `copula_free`
    drops "located at"). `digit_labels` with `single_token`: one-token names, digit labels ("star 7 circle 3. the circle
    is 3"; the toy LLaMA tokenizer splits " 3" into "▁", "3"). `word_labels` with two-word names: one-token word labels
    ("answer a red star dotted a blue circle. the blue circle is dotted"), the shape of Groma's `<r_j><region>`
    lookup (a one-token label, a key the question names in two words). `fused_names` with `word_labels`: each item
    of the context is one added token ("answer<red_star> dotted<blue_circle>. the blue circle is dotted"): the key
    is one position right after its label — Groma's `<r_j><region>` pair, the region feature as one position.
    `fused_question` with `fused_names`: the question names the item by its added token too ("... the <blue_circle>
    is dotted"), the control that asks for an exact-token match among 80 keys instead of a two-word one."""
    if box_labels:
        return _box_lookup_text(rng, min_items, max_items, label_last, queries, copula_free, single_token)
    verb = "" if rng.random() < copula_free else " is"
    k = rng.randint(min_items, max_items)
    if single_token:
        items = rng.sample(list(SHAPES), k)
        labels = rng.sample(range(10), k) if digit_labels else rng.sample(list(COLOURS), k)
        pattern = "{name} {label}" if label_last else "{label} {name}"
    else:
        items = rng.sample(NAMES, k)
        labels = rng.sample(WORD_LABELS, k) if word_labels else rng.sample(range(10), k)
        pattern = "a {name} {label}" if label_last else "{label} a {name}"
    if fused_names:  # no space before an added token (the tokenizer would add a lone "▁"), as `<r_j><region>`
        pattern = "{name} {label}" if label_last else "{label}{name}"
    asked = rng.sample(range(k), min(queries, k - 1))  # never every item: the last would follow by elimination
    keys = [f"<{name.replace(' ', '_')}>" for name in items] if fused_names else items
    context = " ".join(pattern.format(label=label, name=name) for label, name in zip(labels, keys))
    named = keys if fused_names and fused_question else items
    answered = "".join(f". the {named[q]}{verb} {labels[q]}" for q in asked[:-1])
    return f"{context}{answered}. the {named[asked[-1]]}{verb}", f" {labels[asked[-1]]}", k


@functools.cache
def _box_codec():
    """PIN's grid codec on the toy world's geometry, built once (`_box_lookup_text` draws 64 texts a step)."""
    from groundvlm.recipes.toyworld.corpus import box_codec

    return box_codec()


def _grid_box(rng: random.Random, grid_size: int) -> tuple[int, int, int, int]:
    """A uniformly random non-empty inclusive grid box, as `toyworld.corpus.random_grid_box` draws it, from Python's
    generator (a numpy generator per box made drawing the texts the bound of a GPU run)."""
    x1, x2 = sorted((rng.randrange(grid_size), rng.randrange(grid_size)))
    y1, y2 = sorted((rng.randrange(grid_size), rng.randrange(grid_size)))
    return x1, y1, x2, y2


def _box_lookup_text(
    rng, min_items, max_items, label_last, queries, copula_free, single_token=False
) -> tuple[str, str, int]:
    """PIN's box lookup (see `lookup_text`); `single_token`: the items are shapes, one token each and distinct in a
    text ("a star [..] a moon [..]. In the image is a moon located at"), so the key is one token, not two."""
    codec = _box_codec()
    verb = "" if rng.random() < copula_free else " located at"
    k = rng.randint(min_items, max_items)
    items = rng.sample(list(SHAPES) if single_token else NAMES, k)
    labels = []
    while len(labels) < k:  # distinct boxes
        box = codec.encode_cells(_grid_box(rng, codec.grid_size))
        if box not in labels:
            labels.append(box)
    pattern = "a {name} {label}" if label_last else "{label} a {name}"
    asked = rng.sample(range(k), min(queries, k - 1))  # never every item: the last would follow by elimination
    context = " ".join(pattern.format(label=label, name=name) for label, name in zip(labels, items))
    answered = "".join(f". In the image is a {items[q]}{verb} {labels[q]}" for q in asked[:-1])
    return f"{context}{answered}. In the image is a {items[asked[-1]]}{verb}", f" {labels[asked[-1]]}", k


def chance(draw: Callable = lookup_text, n: int = 4000, seed: int = 0) -> float:
    """Accuracy of guessing one of the listed labels: the mean of 1/items over `draw`'s lists."""
    rng = random.Random(seed)
    return sum(1 / draw(rng)[2] for _ in range(n)) / n


@contextlib.contextmanager
def _eval_mode(model):
    """`model` in eval mode for the block, then back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def answer_scores(model, tok, n: int, draw: Callable = lookup_text, seed: int = 123) -> tuple[float, list[float]]:
    """One greedy pass over `n` held-out lookups of `draw`, teacher-forced: (the share whose every answer token -- one
    for a digit or colour label, several for a box -- is the greedy next token given the ones before it, and per
    answer position the share right there). For a box, "[x1,y1,x2,y2]": position 1 (x1) is where the asked item must
    be picked; the later numbers can be copied from the listed box once x1 is right."""
    rng, exact, hits, seen = random.Random(seed), 0, [], []
    with _eval_mode(model):
        for _ in range(n):
            question, answer, _ = draw(rng)
            ids = tok(question + answer, return_tensors="pt").input_ids.to(model.device)
            length = ids.shape[1] - len(tok(question).input_ids)  # the answer's tokens
            if length < 1:
                raise ValueError(f"the answer {answer!r} adds no token to {question!r}")
            right = (model(ids[:, :-1]).logits[0, -length:].argmax(-1) == ids[0, -length:]).tolist()
            exact += all(right)
            for position, hit in enumerate(right):
                if position == len(hits):
                    hits.append(0)
                    seen.append(0)
                hits[position] += hit
                seen[position] += 1
    return exact / n, [round(h / s, 4) for h, s in zip(hits, seen)]


def pick_chance_by_token(tok, n: int, draw: Callable, seed: int = 123) -> list[float]:
    """For box lookups, per answer position the accuracy of a model that picks a listed box at random among those
    agreeing with the answer's tokens so far (teacher-forced, as `answer_scores` scores): about 1/items at x1, where
    the pick is made, and about 1 after it (a copy). The baseline `answer_token_accuracy` reads against; the same
    held-out lookups (`seed`)."""
    rng, totals, seen = random.Random(seed), [], []
    for _ in range(n):
        question, answer, _ = draw(rng)
        listed = _BOX.findall(question[: question.index(". ")])
        target = tok(answer, add_special_tokens=False).input_ids
        candidates = [tok(" " + box.strip(), add_special_tokens=False).input_ids for box in listed]
        for position in range(len(target)):
            before = [c for c in candidates if c[:position] == target[:position]]
            agree = [c for c in before if c[: position + 1] == target[: position + 1]]
            if position == len(totals):
                totals.append(0.0)
                seen.append(0)
            totals[position] += len(agree) / len(before) if before else 0.0
            seen[position] += 1
    return [round(t / count, 4) for t, count in zip(totals, seen)]  # answers of digit tokens differ in length


def accuracy(model, tok, n: int, draw: Callable = lookup_text, seed: int = 123) -> float:
    """Share of held-out lookups whose whole answer the LM writes greedily after the question (`answer_scores`)."""
    return answer_scores(model, tok, n, draw, seed)[0]


def answer_token_accuracy(model, tok, n: int, draw: Callable = lookup_text, seed: int = 123) -> list[float]:
    """Per answer position, the share of held-out lookups right there (`answer_scores`)."""
    return answer_scores(model, tok, n, draw, seed)[1]


def repeat_text(rng: random.Random) -> str:
    """A random run of 4-12 toy names and labels, then the same run again: "7 red star blue circle 3. 7 red star
    blue circle 3" — the second half is predictable only by copying (induction), the training signal from which
    induction heads form in LMs."""
    run = " ".join(
        rng.choice(NAMES) if rng.random() < 0.7 else str(rng.randrange(10)) for _ in range(rng.randint(4, 12))
    )
    return f"{run}. {run}"


@torch.no_grad()
def copy_accuracy(model, tok, n: int, seed: int = 321) -> float:
    """Share of the second-half tokens of held-out `repeat_text`s that the LM predicts greedily: copying
    (induction) — near 1 once induction heads have formed."""
    rng, hits, total = random.Random(seed), 0, 0
    with _eval_mode(model):
        for _ in range(n):
            text = repeat_text(rng)
            ids = tok(text, return_tensors="pt").input_ids.to(model.device)
            first = len(tok(text.split(". ")[0] + ".").input_ids)  # the second half starts after the first "."
            # the second half's first token has nothing to copy from; every later one does
            predicted = model(ids).logits[0, first:-1].argmax(-1)
            hits += int((predicted == ids[0, first + 1 :]).sum())
            total += ids.shape[1] - first - 1
    return hits / total


_BOX = re.compile(r" ?\[[0-9,]+\]")


def _box_answer_mask(texts: list[str], offsets: torch.Tensor) -> torch.Tensor:
    """True on the tokens of every asked box -- each " [x1,y1,x2,y2]" after the context's closing period (the listed
    boxes come before it) -- from the tokens' character `offsets` ([len(texts), length, 2], as the batch's own
    tokenization returns them)."""
    spans = [[m.span() for m in _BOX.finditer(text, text.index(". "))] for text in texts]
    widest = max(map(len, spans), default=0)
    if not widest:
        return torch.zeros(offsets.shape[:2], dtype=torch.bool)
    table = torch.tensor([row + [(-1, -1)] * (widest - len(row)) for row in spans])  # [rows, spans, 2]; (-1,-1) pads
    start, end = offsets[..., 0, None], offsets[..., 1, None]  # [rows, tokens, 1]
    inside = (start >= table[:, None, :, 0]) & (end <= table[:, None, :, 1])  # [rows, tokens, spans]
    return inside.any(-1) & (offsets[..., 1] > offsets[..., 0])


def batch(
    tok,
    rng: random.Random,
    size: int,
    answer_only: bool,
    draw: Callable = lookup_text,
    whole: Callable | None = None,
    mix: float = 0.0,
    label_words: list[str] | None = None,
    box_answers: bool = False,
) -> dict:
    """Right-padded texts; labels on every real token or (`answer_only`) on the answer labels: the digit tokens after
    the context's closing ". " (every answer when a text asks several items), or with `box_answers` every token of
    every asked box (" [x1,y1,x2,y2]" after the context; the listed boxes stay unlabelled). The last
    `round(mix * size)` rows are `whole(rng)` texts instead (the LM's own corpus, kept so that it is not forgotten,
    or `repeat_text`), labelled whole."""
    replay = round(mix * size) if whole else 0
    drawn = [draw(rng) for _ in range(size - replay)]
    texts = [q + a for q, a, _ in drawn] + [whole(rng) for _ in range(replay)]
    box_mask = answer_only and box_answers
    enc = tok(
        texts, return_tensors="pt", padding=True, truncation=True, max_length=256, return_offsets_mapping=box_mask
    )
    offsets = enc.pop("offset_mapping", None)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    if box_mask:
        keep = torch.ones_like(enc.attention_mask, dtype=torch.bool)
        keep[: len(drawn)] = _box_answer_mask(texts[: len(drawn)], offsets[: len(drawn)])
        labels = labels.masked_fill(~(keep & (enc.attention_mask == 1)), -100)
    elif answer_only:
        period = tok.convert_tokens_to_ids(".")
        words = label_words or [str(d) for d in range(10)]  # the labels' tokens ("▁red" for `single_token`)
        label_ids = torch.tensor(tok.convert_tokens_to_ids(words))
        after_context = (enc.input_ids == period).cumsum(1) > 0
        keep = after_context & torch.isin(enc.input_ids, label_ids) & (enc.attention_mask == 1)
        keep[size - replay :] = enc.attention_mask[size - replay :] == 1
        labels = labels.masked_fill(~keep, -100)
    return {**enc, "labels": labels}


class _WorkerBatches(torch.utils.data.IterableDataset):
    """Endless batches of `make(rng)`, each worker process with its own generator (`seed`, worker id)."""

    def __init__(self, make: Callable, seed: str):
        self.make, self.seed = make, seed

    def __iter__(self):
        rng = random.Random(f"{self.seed}:{torch.utils.data.get_worker_info().id}")
        while True:
            yield self.make(rng)


class BatchStream:
    """The training batches of one stage, drawn while the model trains. With `workers` = 0, one thread draws the next
    batch from `rng` (the same batches, in the same order, as drawing each in turn; the tokenizer releases the GIL).
    With `workers` > 0, as many processes draw batches, each from its own generator seeded by `seed` and its id (a
    different but reproducible stream): texts are drawn and tokenized on the CPU, which can bound a small LM on a
    GPU."""

    def __init__(self, make: Callable, rng: random.Random, workers: int = 0, seed: str = "0"):
        self.workers = workers
        if workers:
            loader = torch.utils.data.DataLoader(
                _WorkerBatches(make, seed), batch_size=None, num_workers=workers, prefetch_factor=4
            )
            self._batches = iter(loader)
        else:
            self._make = functools.partial(make, rng)
            self._pool = ThreadPoolExecutor(max_workers=1)
            self._pending = self._pool.submit(self._make)

    def next(self, more: bool = True) -> dict:
        """The next batch; `more`: draw another behind it (False at a stage's last step)."""
        if self.workers:
            return next(self._batches)
        inputs = self._pending.result()
        if more:
            self._pending = self._pool.submit(self._make)
        return inputs

    def settle(self) -> None:
        """Wait until no thread of this process is using the tokenizer."""
        if not self.workers:
            self._pending.result()

    def close(self) -> None:
        if self.workers:
            del self._batches  # the worker processes stop with their iterator
        else:
            self._pool.shutdown()


def write(result: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


def load_lm(path: str, random_init: bool = False, hidden_size: int | None = None, num_hidden_layers: int | None = None):
    """The causal LM at `path` in fp32, or (`random_init`, the control) its architecture freshly initialised from
    torch's current seed — optionally wider (`hidden_size`: heads of the same size, the MLP in the same ratio) or
    deeper."""
    if random_init:
        config = AutoConfig.from_pretrained(path)
        if hidden_size:
            head_dim = config.hidden_size // config.num_attention_heads
            if config.model_type == "opt":  # OPT names its MLP width ffn_dim and projects embeddings at its own width
                config.ffn_dim = config.ffn_dim * hidden_size // config.hidden_size
                config.word_embed_proj_dim = hidden_size
                config.num_attention_heads = hidden_size // head_dim
            else:  # Llama-style
                config.intermediate_size = config.intermediate_size * hidden_size // config.hidden_size
                config.num_attention_heads = config.num_key_value_heads = hidden_size // head_dim
                config.head_dim = head_dim
            config.hidden_size = hidden_size
        if num_hidden_layers:
            config.num_hidden_layers = num_hidden_layers
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


# The curriculum's forms (`--curriculum FORM:STEPS ...`), easiest first. From scratch a small LM learns only the
# first-order lookup, where the query is the key token itself ("star red circle blue. the circle" -> blue); taught in
# this order, a fresh 2-layer toy Llama went on to the forms whose key lies further back ("is", then two-word names),
# while 4-layer ones passed "is" but not yet two-word names in 2,500 steps (benchmarks/RESULTS.md, PIN section).
FORMS = {
    "one-token-free": {"single_token": True, "box_labels": False, "copula_free": 1.0},
    "one-token": {"single_token": True, "box_labels": False, "copula_free": 0.0},
    "one-token-digits": {"single_token": True, "digit_labels": True, "box_labels": False, "copula_free": 0.0},
    "names": {"single_token": False, "box_labels": False, "copula_free": 0.0},
    "names-word": {"single_token": False, "word_labels": True, "box_labels": False, "copula_free": 0.0},
    "fused-names": {
        "single_token": False,
        "word_labels": True,
        "fused_names": True,
        "box_labels": False,
        "copula_free": 0.0,
    },  # fmt: skip
    "fused-exact": {
        "single_token": False,
        "word_labels": True,
        "fused_names": True,
        "fused_question": True,
        "box_labels": False,
        "copula_free": 0.0,
    },  # fmt: skip
    # PIN's box lookup without " located at": the asked name stands right before "[", as each listed name does, so a
    # first-order copy (induction on the name) finds the box -- the easy stage before "boxes"
    "boxes-free": {"single_token": False, "box_labels": True, "copula_free": 1.0},
    "boxes": {"single_token": False, "box_labels": True, "copula_free": 0.0},
    # the same two with one-token keys (shapes): whether a two-token key is what keeps the lookup from forming
    "boxes-shape-free": {"single_token": True, "box_labels": True, "copula_free": 1.0},
    "boxes-shape": {"single_token": True, "box_labels": True, "copula_free": 0.0},
}


def parse_curriculum(specs: list[str]) -> list[tuple[str, int]]:
    """`["one-token:1000", ...]` -> `[("one-token", 1000), ...]`; ValueError names a spec that is not FORM:STEPS."""
    out = []
    for spec in specs:
        name, colon, steps = spec.partition(":")
        if name not in FORMS or not colon or not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--curriculum takes FORM:STEPS with FORM one of {', '.join(FORMS)}, got {spec!r}")
        out.append((name, int(steps)))
    return out


def stages(args: argparse.Namespace) -> list[tuple[str, dict, int]]:
    """(name, lookup_text settings, steps) per stage: the `--curriculum`, or one stage of the form the flags give."""
    if not args.curriculum:
        form = {"single_token": args.single_token, "box_labels": args.box_labels, "copula_free": args.copula_free}
        return [("flags", form, args.steps)]
    return [(name, FORMS[name], steps) for name, steps in parse_curriculum(args.curriculum)]


def probe(args: argparse.Namespace) -> dict:
    """Fine-tune `args.lm` on lookups of the form the arguments give (or through the `--curriculum`'s forms); the
    held-out accuracy curve on the (last) form."""
    torch.manual_seed(args.seed)
    plan = stages(args)

    def form(settings: dict, **override) -> Callable:
        # trained on `queries` per text, evaluated on one: a later query could be answered by elimination
        fixed = {"max_items": args.max_items, "label_last": args.label_last, "queries": args.queries}
        return functools.partial(lookup_text, **{**fixed, **settings, **override})

    target = plan[-1][1]
    held_out = form(target, queries=1, copula_free=0.0)  # always asked with "is" / "located at"
    base_rate = chance(held_out)
    tok = AutoTokenizer.from_pretrained(args.lm)
    if args.save:  # the LM's tokenizer as it came, before the padding and truncation settings of the batches
        tok.save_pretrained(args.save)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    model = load_lm(args.lm, args.random_init, args.hidden_size, args.num_hidden_layers).to(args.device)
    if any(stage_form.get("fused_names") for _, stage_form, _ in plan):  # one new token per name, as Groma adds <r_j>
        tok.add_tokens(FUSED_NAMES)
        model.resize_token_embeddings(len(tok))
        if args.save:
            tok.save_pretrained(args.save)

    def fresh_optimizer():
        # AdamW with a linear warm-up over `args.warmup` steps, then a constant rate
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
        warm = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, args.warmup)))
        return optimizer, warm

    optimizer, schedule = fresh_optimizer()
    settings = (
        "lm",
        "seed",
        "random_init",
        "hidden_size",
        "num_hidden_layers",
        "steps",
        "curriculum",
        "restart_per_stage",
        "lr",
        "warmup",
        "batch_size",
        "data_workers",
        "answer_only",
        "label_last",
        "max_items",
        "queries",
        "corpus_mix",
        "repeat_mix",
        "copula_free",
        "single_token",
        "box_labels",
    )
    whole, mix = None, args.corpus_mix or args.repeat_mix
    if args.corpus_mix:
        from groundvlm.recipes.toyworld.corpus import lm_corpus

        corpus = lm_corpus(args.corpus_scenes)
        whole = functools.partial(random.Random.choice, seq=corpus)
    elif args.repeat_mix:
        whole = repeat_text
    rng, t0 = random.Random(args.seed), time.time()
    exact, by_token = answer_scores(model, tok, args.eval_n, held_out)
    pick_chance = pick_chance_by_token(tok, args.eval_n, held_out) if target["box_labels"] else None
    curve = [[0, exact, None]]
    tokens = {"last": by_token}  # per answer token, at the latest evaluation
    copy_curve = [[0, copy_accuracy(model, tok, args.eval_n)]] if args.repeat_mix else None
    # the induction-shaped question (no "is"), held out, when training asks it
    free = form(target, queries=1, copula_free=1.0)
    free_curve = [[0, accuracy(model, tok, args.eval_n, free)]] if target["copula_free"] else None
    stage_curve = [] if args.curriculum else None  # [step, stage, accuracy on that stage's form]

    def result() -> dict:
        return {
            **{name: getattr(args, name) for name in settings},
            "device": str(args.device),
            "chance": round(base_rate, 4),
            "accuracy_curve": curve,
            "answer_token_accuracy": tokens["last"],
            **({"answer_token_pick_chance": pick_chance} if pick_chance else {}),
            **({"copy_accuracy_curve": copy_curve} if copy_curve else {}),
            **({"copula_free_accuracy_curve": free_curve} if free_curve else {}),
            **({"stage_accuracy_curve": stage_curve} if stage_curve is not None else {}),
            "seconds": round(time.time() - t0, 1),
        }

    print(f"step 0: accuracy {curve[0][1]:.3f} (chance {base_rate:.3f}), by answer token {tokens['last']}", flush=True)
    if pick_chance:
        print(f"a random pick of a listed box, by answer token: {pick_chance}", flush=True)
    model.train()
    step = 0
    for index, (name, stage_form, stage_steps) in enumerate(plan):
        if index and args.restart_per_stage:  # as separate runs chained with --save / --lm would
            optimizer, schedule = fresh_optimizer()
        draw = form(stage_form)
        stage_held_out = form(stage_form, queries=1)  # the stage's own form, with or without "is"
        one_token_labels = stage_form["single_token"] and not stage_form.get("digit_labels")
        label_words = [f"▁{colour}" for colour in COLOURS] if one_token_labels else None
        if stage_form.get("word_labels"):
            label_words = [f"▁{word}" for word in WORD_LABELS]

        def make(stage_rng, draw=draw, label_words=label_words, boxes=stage_form["box_labels"]):
            return batch(tok, stage_rng, args.batch_size, args.answer_only, draw, whole, mix, label_words, boxes)

        stream = BatchStream(make, rng, args.data_workers, seed=f"{args.seed}:{index}")
        for stage_step in range(1, stage_steps + 1):
            step += 1
            inputs = stream.next(more=stage_step < stage_steps)
            loss = model(**{key: value.to(args.device) for key, value in inputs.items()}).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            if step % args.eval_every and stage_step < stage_steps:
                continue
            stream.settle()  # the tokenizer is not shared across threads: the evaluation waits for the batch
            exact, tokens["last"] = answer_scores(model, tok, args.eval_n, held_out)
            curve.append([step, exact, round(loss.item(), 4)])
            if copy_curve:
                copy_curve.append([step, copy_accuracy(model, tok, args.eval_n)])
                print(f"step {step}: copy accuracy {copy_curve[-1][1]:.3f}", flush=True)
            if free_curve:
                free_curve.append([step, accuracy(model, tok, args.eval_n, free)])
                print(f"step {step}: accuracy without 'is' {free_curve[-1][1]:.3f}", flush=True)
            if stage_curve is not None:
                stage_curve.append([step, name, accuracy(model, tok, args.eval_n, stage_held_out)])
                print(f"step {step}: stage {name}, its form's accuracy {stage_curve[-1][2]:.3f}", flush=True)
            print(
                f"step {step}: accuracy {curve[-1][1]:.3f}, loss {loss.item():.3f}, {time.time() - t0:.0f} s, "
                f"by answer token {tokens['last']}",
                flush=True,
            )
            # the curve so far, so that a run cut short (a device call's time limit) still leaves its result
            write(result(), args.out)
            if args.save:
                model.save_pretrained(args.save)
        stream.close()
    return result()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--lm", default="recipes/toy_checkpoints/lm-llama", help="a causal LM folder with its tokenizer"
    )
    parser.add_argument("--random-init", action="store_true", help="the LM's architecture, freshly initialised")
    parser.add_argument("--hidden-size", type=int, default=None, help="with --random-init: this width")
    parser.add_argument("--num-hidden-layers", type=int, default=None, help="with --random-init: this depth")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument(
        "--seed", type=int, default=0, help="initialisation and training texts (the held-out lookups stay fixed)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps (then constant)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--data-workers",
        type=int,
        default=0,
        help="processes drawing and tokenizing the training texts (on a GPU the CPU side can bound a small LM); each "
        "has its own generator, so the stream differs from the default's single one, reproducibly",
    )
    parser.add_argument(
        "--answer-only",
        action="store_true",
        help="loss on the label token only (with --box-labels: on the asked box's tokens)",
    )
    parser.add_argument("--label-last", action="store_true", help="the label after the item (classic induction)")
    parser.add_argument("--max-items", type=int, default=8, help="items per list: 2 to this (default 8)")
    parser.add_argument(
        "--queries",
        type=int,
        default=1,
        help="items asked per text in training, at most items - 1 (the earlier ones answered; with --box-labels "
        "--answer-only every asked box is in the loss); accuracy is on one",
    )
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument(
        "--corpus-mix", type=float, default=0.0, help="share of each batch drawn from the toy LM corpus (0 to <1)"
    )
    parser.add_argument(
        "--repeat-mix", type=float, default=0.0, help="share of each batch that is a repeated run (repeat_text)"
    )
    parser.add_argument(
        "--copula-free",
        type=float,
        default=0.0,
        help="share of training texts asked without 'is' (evaluation always asks with it)",
    )
    parser.add_argument(
        "--single-token",
        action="store_true",
        help="one-token names (shapes) and labels (colours): with --label-last and no 'is', a first-order copy",
    )
    parser.add_argument(
        "--box-labels",
        action="store_true",
        help="PIN grid boxes as labels, asked with PIN's prompt ('In the image is a {name} located at')",
    )
    parser.add_argument(
        "--curriculum",
        nargs="+",
        default=None,
        metavar="FORM:STEPS",
        help=f"train through these forms in order ({', '.join(FORMS)}), each for its steps, instead of --steps; "
        "accuracy is on the last form",
    )
    parser.add_argument(
        "--restart-per-stage",
        action="store_true",
        help="with --curriculum: a fresh optimizer and warm-up at each stage (as chained runs have)",
    )
    parser.add_argument("--corpus-scenes", type=int, default=10000, help="scenes of that corpus (gpu presets: 10000)")
    parser.add_argument("--save", type=Path, default=None, help="save the fine-tuned LM here at every evaluation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the result as JSON here (rewritten at every evaluation)"
    )
    args = parser.parse_args(argv)
    if args.data_workers < 0:
        parser.error(f"--data-workers must be >= 0, got {args.data_workers}")
    if args.steps < 0 or min(args.batch_size, args.eval_every, args.eval_n, args.queries) < 1:
        parser.error("--steps must be >= 0 and --batch-size, --eval-every, --eval-n, --queries >= 1")
    if not 0 <= args.copula_free <= 1:
        parser.error(f"--copula-free must be in [0, 1], got {args.copula_free}")
    if not (0 <= args.corpus_mix < 1 and 0 <= args.repeat_mix < 1):
        parser.error(f"--corpus-mix and --repeat-mix must be in [0, 1), got {args.corpus_mix}, {args.repeat_mix}")
    if args.corpus_mix and args.repeat_mix:
        parser.error("--corpus-mix and --repeat-mix: one at a time")
    if (args.hidden_size or args.num_hidden_layers) and not args.random_init:
        parser.error("--hidden-size / --num-hidden-layers change the architecture: they need --random-init")
    if not 2 <= args.max_items <= 10:
        parser.error(f"--max-items must be 2 to 10 (ten single-digit labels), got {args.max_items}")
    if args.curriculum:
        if args.single_token or args.box_labels or args.copula_free:  # --answer-only is the loss, not a form
            parser.error("--curriculum sets the form of each stage: drop --single-token/--box-labels/--copula-free")
        try:
            args.steps = sum(steps for _, steps in parse_curriculum(args.curriculum))
        except ValueError as error:
            parser.error(str(error))
    if (args.single_token or any(spec.startswith("one-token") for spec in args.curriculum or [])) and (
        args.max_items > len(COLOURS)
    ):
        parser.error(f"the one-token forms have {len(COLOURS)} colour labels: --max-items must be <= {len(COLOURS)}")
    result = probe(args)
    write(result, args.out)
    return result


if __name__ == "__main__":
    main()
