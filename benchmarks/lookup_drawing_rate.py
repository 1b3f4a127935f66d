"""How fast the CPU draws and tokenizes the lookup probe's training batches (`lm_lookup_probe.BatchStream`), per
number of drawing workers -- the rate a small LM on a GPU cannot outrun.

    python benchmarks/lookup_drawing_rate.py --lm <folder with a tokenizer> --workers 0 1 2 [--out rate.json]
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_lookup_probe as probe  # noqa: E402  (a script of this folder)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", required=True, help="a folder with the LM's tokenizer")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="drawing processes (0: one thread)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-items", type=int, default=6)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per setting (after one untimed)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.workers) < 0 or min(args.batch_size, args.batches) < 1:
        parser.error("--workers must be >= 0, --batch-size and --batches >= 1")
    tok = AutoTokenizer.from_pretrained(args.lm)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "right"
    draw = functools.partial(
        probe.lookup_text, max_items=args.max_items, label_last=True, box_labels=True, queries=args.queries
    )

    def make(rng):
        return probe.batch(tok, rng, args.batch_size, True, draw, box_answers=True)

    rates = {}
    for workers in args.workers:
        stream = probe.BatchStream(make, random.Random(0), workers, seed="0")
        stream.next()
        start = time.perf_counter()
        for _ in range(args.batches):
            stream.next()
        rates[str(workers)] = round(args.batches / (time.perf_counter() - start), 1)
        stream.close()
        print(f"{workers} workers: {rates[str(workers)]} batches/s of {args.batch_size} texts", flush=True)
    result = {
        **{k: getattr(args, k) for k in ("lm", "batch_size", "max_items", "queries", "batches")},
        "cpu_cores": os.cpu_count(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "batches_per_second_by_workers": rates,
    }
    probe.write(result, args.out)
    return result


if __name__ == "__main__":
    main()
