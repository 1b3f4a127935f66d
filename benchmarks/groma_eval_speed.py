"""Groma evaluation throughput at the Groma-7B shape: REC examples/s of the batched evaluation loop
(`recipes/systems/groma/evaluation.generate`, the loop `evaluate_rec` runs), random weights, bf16, one GPU.

Rows: batch size x prompt order (sorted by length, longest first, vs the given order) x KV cache
(`static`: Groma's default, which compiles the decoding step per shape; `dynamic`). Each row runs the same
`--examples` REC queries ("Locate <p>expression</p> in the image." with expressions of 1 to 24 words, images of
four sizes) after one untimed pass over the same data (compilation and kernel choice happen there), and reports
examples/s and the mean left padding per batch. Greedy answers are checked equal across rows (the batching must not
change them); with random weights they are noise, only the time means something.

    python benchmarks/groma_eval_speed.py                     # GPU, 7B shape
    python benchmarks/groma_eval_speed.py --tiny              # CPU smoke run, tiny config
Writes groma_eval_speed.{json,md} to $OUT if set, else to --out if given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groma_speed import IMAGE_SIZES, build, noise_image, run_meta, tiny_configs, toy_tokenizer, write_report  # noqa: E402

from groundvlm.modeling import GromaConfig, GromaForConditionalGeneration  # noqa: E402
from groundvlm.processing import GromaImageProcessor, GromaProcessor  # noqa: E402
from groundvlm.recipes.systems.groma.evaluation import MAX_NEW_TOKENS, generate, length_sorted_order  # noqa: E402
from tests._groma_tiny import groma_token_id_kwargs  # noqa: E402

WORDS = "the red star left of a big blue square near top small green circle under one two bright dark".split()


def groma_7b_config_for(tok) -> GromaConfig:
    """The released Groma-7B shape with the added tokens' ids where the toy tokenizer `tok` has them."""
    return GromaConfig(**groma_token_id_kwargs(tok))


def rec_samples(n: int) -> list[dict]:
    samples = []
    for i in range(n):
        words = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + (i * 5) % 24)]
        samples.append(
            {
                "image": noise_image(*IMAGE_SIZES[i % len(IMAGE_SIZES)], seed=i),
                "messages": [{"role": "user", "content": f"Locate <p>{' '.join(words)}</p> in the image."}],
                "refer_boxes": [],
            }
        )
    return samples


def padding_per_batch(lengths: list[int], order: list[int], batch: int) -> float:
    """Mean left padding per sequence, averaged over the batches `order` is cut into."""
    pads = []
    for start in range(0, len(order), batch):
        chunk = [lengths[i] for i in order[start : start + batch]]
        pads.append(sum(max(chunk) - n for n in chunk) / len(chunk))
    return sum(pads) / len(pads)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--caches", nargs="+", choices=("static", "dynamic"), default=["static", "dynamic"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.examples < 1 or min(args.batch_sizes) < 1:
        parser.error("need --examples >= 1 and positive batch sizes")
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
    elif not torch.cuda.is_available():
        raise SystemExit("the 7B-shape run needs a CUDA GPU; use --tiny for a CPU smoke run")
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    tok, base = toy_tokenizer()
    config = tiny_configs(tok, base)[0] if args.tiny else groma_7b_config_for(tok)
    model, build_s = build(GromaForConditionalGeneration, config, device, dtype)
    size = config.image_size
    processor = GromaProcessor(
        GromaImageProcessor(size={"height": size, "width": size}),
        tok,
        num_image_tokens=config.num_image_tokens,
        num_proxy_tokens=config.num_proxy_tokens,
    )
    samples = rec_samples(args.examples)
    prompts = [s["messages"][0]["content"] for s in samples]
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=False)["input_ids"]]
    rows, answers = [], {}
    for cache in args.caches:
        for batch in args.batch_sizes:
            for sort in (True, False):
                run = lambda: generate(  # noqa: E731
                    model, processor, samples, MAX_NEW_TOKENS["rec"], batch, "REC", sort, cache
                )
                run()  # untimed: compilation per shape, kernel choice
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = run()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                order = length_sorted_order(prompts, tok) if sort else list(range(len(samples)))
                key = (cache, batch, sort)
                answers[key] = [a["text"] for a in out]
                rows.append(
                    {
                        "cache": cache,
                        "batch_size": batch,
                        "sorted_by_length": sort,
                        "examples": len(samples),
                        "seconds": seconds,
                        "examples_per_s": len(samples) / seconds,
                        "mean_left_padding_tokens": padding_per_batch(lengths, order, batch),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    reference = next(iter(answers.values()))
    agree = {f"{c}/b{b}/{'sorted' if s else 'given'}": a == reference for (c, b, s), a in answers.items()}
    report = {
        "meta": {
            **run_meta("benchmarks/groma_eval_speed.py", argv, device, dtype),
            "build_s": build_s,
            "prompt_tokens": [min(lengths) + 1, max(lengths) + 1],  # with <s>
        },
        "results": rows,
        "answers_equal_to_first_row": agree,
    }
    meta = report["meta"]
    lines = [
        f"Device: {meta['device']} · torch {meta['torch']} · transformers {meta['transformers']} · {meta['dtype']} · "
        f"{meta['date']} · commit {meta['git_commit']}",
        f"Command: `{meta['command']}`; REC, {MAX_NEW_TOKENS['rec']} new tokens, greedy; greedy answers equal "
        f"across rows: {all(agree.values())}",
        "",
        "| cache | batch | order | examples/s | mean left padding (tokens) |",
        "|---|---:|---|---:|---:|",
    ]
    for r in rows:
        order = "sorted by length" if r["sorted_by_length"] else "as given"
        lines.append(
            f"| {r['cache']} | {r['batch_size']} | {order} | {r['examples_per_s']:.2f} | "
            f"{r['mean_left_padding_tokens']:.1f} |"
        )
    write_report("groma_eval_speed", report, "\n".join(lines) + "\n", args.out)
    return report


if __name__ == "__main__":
    main()
