"""Where does a toy base VLM lose the binding of an attribute to its object? (CPU, minutes)

PIN asks its frozen VLM for the box of *the* object its prompt names, among up to three (PIN §4). The toy bases
localise one object per image but not one of several (benchmarks/RESULTS.md, PIN section). This probe asks the same
of an attribute that the base *was* trained to see, colour, on unseen scenes of two or three objects:

1. **answers**: the VLM itself, "Question: What colour is the star? Answer:" (and "What shape is the red object?"),
   greedy, by objects per scene -- against `scene_chance`, the accuracy of naming a random object's attribute of the
   same scene (sees the attributes, binds nothing);
2. **features**: an attention probe (a learned query per shape name attends over a feature sequence; a linear head
   names the colour), trained on frozen features of 2-3-object scenes and scored on new ones, at three depths of the
   base: the ViT's patch tokens, the Q-Former's query outputs, the projected visual prompts the LLM reads. Where the
   accuracy drops to `scene_chance`, that stage has mixed the objects' attributes into a bag.

    python benchmarks/binding_probe.py --base recipes/toy_checkpoints/vlm-caption --out runs/binding_probe.json

`--bind-qformer-steps N --save DIR`: first train the base's Q-Former (and its query tokens; ViT and LLM untouched)
through an attention probe on the colour of the named shape -- a direct binding signal of the kind BLIP-2's
first stage gives a real Q-Former (ITM against captions that differ only in which attribute goes with which object)
-- save the model to DIR, then probe it. Never positions: the objective names a colour.

`--text-lookup-steps N` (alone): the same questions with the scene's caption in front instead of the image, the base's
LLM fine-tuned on them for N steps (answer-only loss) -- whether the LLM can do the lookup at all; `--text-lookup-lm DIR`
asks it of a plain causal LM (e.g. `recipes/toy_checkpoints/lm-llama`) instead.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from groundvlm.modeling import VPGTransModel
from groundvlm.processing import VPGTransProcessor
from groundvlm.recipes.common.provenance import git_commit
from groundvlm.recipes.systems.vpgtrans.binding import (
    AttentionProbe,
    bind_qformer,
    colour_rows,
    probe_batch,
    stage_features,
)
from groundvlm.recipes.systems.vpgtrans.captioner import answer_questions, binding_questions, score_binding

STAGES = ("vit_patches", "qformer_outputs", "projected_prompts")


def probe_stage(train, test, feats_train, feats_test, stage: int, shapes, colours, steps: int, seed: int) -> dict:
    """Train an AttentionProbe on one stage's features of `train`, score it on `test`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    def batch(rows, feats, idx):
        return probe_batch(rows, feats, idx, stage, shapes, colours)

    dim = feats_train[train[0]["scene"]][stage].shape[-1]
    probe = AttentionProbe(dim, len(shapes), len(colours))
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x, s, y = batch(train, feats_train, rng.integers(0, len(train), 128))
        loss = torch.nn.functional.cross_entropy(probe(x, s), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, s, y = batch(test, feats_test, range(len(test)))
    with torch.no_grad():
        accuracy = (probe(x, s).argmax(-1) == y).float().mean().item()
    return {"accuracy": accuracy, "final_train_loss": float(loss)}


def answer_accuracy(model, processor, seed: int, n_scenes: int, batch_size: int = 32) -> dict:
    """The VLM's own greedy answers to colour/shape questions (`captioner.binding_questions`), by objects per scene,
    each group scored by `captioner.score_binding` (accuracy and scene chance)."""
    rows = binding_questions(n_scenes, seed, "all", min_objects=1)
    answers = answer_questions(model, processor, rows, batch_size)
    result = {}
    for count in sorted({r["objects"] for r in rows}):
        group = [(a, r) for a, r in zip(answers, rows) if r["objects"] == count]
        score = score_binding([a for a, _ in group], [r for _, r in group])
        result[f"{count}_objects"] = {k: score[k] for k in ("accuracy", "scene_chance", "questions")}
    return result


def text_lookup_rows(seed: int, n_scenes: int) -> list[dict]:
    """The binding questions of 2-3-object scenes asked with the scene's caption in front instead of its image:
    "a photo of a red star and a blue moon. Question: What colour is the star? Answer:" -> " red"."""
    from groundvlm.recipes.toyworld import ToyWorld, texts

    world, rows = ToyWorld(seed=seed, split="all"), []
    for i in range(n_scenes):
        scene = world.scene(i)
        if len(scene.objects) < 2:
            continue
        rng = np.random.default_rng((seed, i))
        caption = texts.caption(scene, rng)
        for question, answer, kind in texts.vqa(scene, rng):
            if kind in texts.BINDING_KINDS:
                options = len({getattr(o, kind) for o in scene.objects} - {None})
                rows.append({"prompt": f"{caption} Question: {question} Answer:", "answer": " " + answer,
                             "options": options})  # fmt: skip
    return rows


def text_lookup(
    model, processor, steps: int, lr: float = 1e-3, seed: int = 0, every: int = 100, scenes: tuple = (3000, 300)
) -> dict:
    """Can the base's LLM do the binding lookup in text? Fine-tune it (AdamW, batch 64, loss on the answer only) on
    `text_lookup_rows` and score the first answer token greedily on held-out scenes every `every` steps. A pretrained
    LLM reads "What colour is the star?" off the caption in context; an LLM that stays at `scene_chance` here cannot
    be expected to do it over visual prompts either."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lm, tok = model.language_model, processor.tokenizer
    train, test = text_lookup_rows(seed + 1, scenes[0]), text_lookup_rows(seed + 2, scenes[1])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def encode(rows):
        ids = [tok(r["prompt"])["input_ids"] + tok(r["answer"], add_special_tokens=False)["input_ids"] for r in rows]
        n_prompt = [len(tok(r["prompt"])["input_ids"]) for r in rows]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), pad)
        labels = torch.full((len(ids), width), -100)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for k, (row, n) in enumerate(zip(ids, n_prompt)):
            input_ids[k, : len(row)] = torch.tensor(row)
            labels[k, n : len(row)] = torch.tensor(row[n:])
            mask[k, : len(row)] = 1
        return input_ids, mask, labels

    @torch.no_grad()
    def accuracy() -> float:
        lm.eval()
        hits = 0
        for row in test:
            ids = torch.tensor([tok(row["prompt"])["input_ids"]])
            hits += (
                lm(input_ids=ids).logits[0, -1].argmax().item()
                == tok(row["answer"], add_special_tokens=False)["input_ids"][0]
            )
        lm.train()
        return hits / len(test)

    curve = [{"step": 0, "accuracy": accuracy()}]
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr)
    lm.train()
    for step in range(1, steps + 1):
        input_ids, mask, labels = encode([train[j] for j in rng.integers(0, len(train), 64)])
        loss = lm(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            curve.append({"step": step, "loss": loss.item(), "accuracy": accuracy()})
    return {
        "curve": curve,
        "scene_chance": sum(1.0 / r["options"] for r in test) / len(test),
        "rows": {"train": len(train), "test": len(test)},
        "lr": lr,
        "example": test[0],
    }


def run(
    base: str,
    train_scenes: int,
    test_scenes: int,
    steps: int,
    answer_scenes: int,
    seed: int,
    bind_qformer_steps: int = 0,
    save: str | None = None,
) -> dict:
    model = VPGTransModel.from_pretrained(base).eval()
    processor = VPGTransProcessor.from_pretrained(base)
    start = time.time()
    binding_curve = None
    if bind_qformer_steps:
        binding_curve = bind_qformer(model, processor, bind_qformer_steps, seed=seed)
        if save:
            model.save_pretrained(save)
            processor.save_pretrained(save)
    train, test = colour_rows(seed + 1, train_scenes), colour_rows(seed + 2, test_scenes)
    if not train or not test:
        raise ValueError("no probe rows: raise --train-scenes / --test-scenes")
    shapes = sorted({r["shape"] for r in train + test})
    colours = sorted({r["colour"] for r in train + test})
    feats_train = stage_features(model, processor, train)
    feats_test = stage_features(model, processor, test)
    probes = {
        name: probe_stage(train, test, feats_train, feats_test, k, shapes, colours, steps, seed)
        for k, name in enumerate(STAGES)
    }
    return {
        "base": base,
        "qformer_binding_steps": bind_qformer_steps,
        "qformer_binding_curve": binding_curve,
        "saved_to": save,
        "answers": answer_accuracy(model, processor, seed + 3, answer_scenes),
        "probes": probes,
        "probe_scene_chance": sum(1.0 / r["options"] for r in test) / len(test),
        "probe_rows": {"train": len(train), "test": len(test)},
        "settings": {
            "train_scenes": train_scenes,
            "test_scenes": test_scenes,
            "steps": steps,
            "answer_scenes": answer_scenes,
            "seed": seed,
        },
        "seconds": round(time.time() - start, 1),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "commit": git_commit(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="recipes/toy_checkpoints/vlm-caption")
    parser.add_argument("--train-scenes", type=int, default=4000)
    parser.add_argument("--test-scenes", type=int, default=600)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--answer-scenes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bind-qformer-steps", type=int, default=0, help="train the Q-Former to bind first")
    parser.add_argument(
        "--save", default=None, help="folder for the model after --bind-qformer-steps or --text-lookup-steps"
    )
    parser.add_argument("--out", default=None, help="JSON file for the result (default: print only)")
    parser.add_argument(
        "--text-lookup-steps", type=int, default=0, help="only: can the base's LLM learn the lookup in text (steps)"
    )
    parser.add_argument("--text-lookup-lm", default=None, help="with --text-lookup-steps: a causal LM folder instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.text_lookup_steps:
        if args.text_lookup_lm:  # a plain causal LM folder (e.g. a toy LM asset) instead of the base's LLM
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = SimpleNamespace(language_model=AutoModelForCausalLM.from_pretrained(args.text_lookup_lm))
            processor = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(args.text_lookup_lm))
        else:
            model = VPGTransModel.from_pretrained(args.base)
            processor = VPGTransProcessor.from_pretrained(args.base)
        start = time.time()
        result = {"base": args.text_lookup_lm or args.base, "text_lookup": text_lookup(model, processor,
                  args.text_lookup_steps, seed=args.seed), "seconds": round(time.time() - start, 1),
                  "commit": git_commit(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}  # fmt: skip
        if args.save:  # the model with its taught LLM: the plain LM with its tokenizer, or the whole VLM
            saved = (model.language_model, processor.tokenizer) if args.text_lookup_lm else (model, processor)
            for part in saved:
                part.save_pretrained(args.save)
            result["saved_to"] = args.save
    else:
        if args.save and not args.bind_qformer_steps:
            parser.error("--save keeps the model trained by --bind-qformer-steps; give that too")
        result = run(
            args.base,
            args.train_scenes,
            args.test_scenes,
            args.steps,
            args.answer_scenes,
            args.seed,
            args.bind_qformer_steps,
            args.save,
        )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
