"""PIN's toy Table-1 analogue on one GPU: every method (and PIN variants) as concurrent `recipes/pin.py` runs.

    python benchmarks/pin_table.py --base_model runs/cache/.../vlm-caption --out runs/pin/table \
        --variants pin_lr1e-3:"--method pin" pin_lr3e-4:"--method pin --learning_rate 3e-4" coop:"--method coop" ...
    python benchmarks/pin_table.py --out runs/pin/table --merge-only      # re-merge finished runs

Why concurrent: the toy models are tiny, so one run leaves the GPU mostly idle (it is launch-bound); running the
methods side by side gives every method the same training budget within one device call. Each variant is one
`recipes/pin.py --preset gpu` process with its own `--output_dir <out>/<variant>` and extra arguments, so every
number still comes from the recipe a user runs. The constant baselines (raw, random, full-image box) are cheap and
run inside the first variant.

Merging: every variant's `comparison.json` is read; the table lists each (variant, method) row with held-out mIoU,
mIoU_M, mIoU_L, parse rate, the centre correlation (does the output follow the object?) and validation mIoU. The
PIN variant named for the table is the one with the best *validation* mIoU (tuning on validation only). Output:
`<out>/table.md`, `<out>/table.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHOD_ORDER = ("raw", "random", "full_image", "coop", "vpt_f", "vpt_phi", "lora_phi", "pin")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`name:"--flag value ..."` → (name, argv)."""
    name, sep, args = text.partition(":")
    if not sep or not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ValueError(f'variant {text!r} must look like name:"--method pin --learning_rate 3e-4"')
    return name, shlex.split(args)


def launch(
    name: str, extra: list[str], out: Path, base_model: str | None, common: list[str], preset: str
) -> subprocess.Popen:
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "recipes" / "pin.py"), "--preset", preset, "--output_dir", str(run_dir), *common]
    if base_model:
        cmd += ["--base_model", base_model]
    cmd += extra
    log = open(run_dir / "stdout.log", "w")  # noqa: SIM115 (closed when the process ends, by the OS)
    print(f"[pin_table] {name}: {' '.join(cmd)}", flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())


def merge(out: Path, names: list[str]) -> dict:
    """Rows of every finished variant; the PIN variant with the best validation mIoU is marked `selected`."""
    rows = []
    for name in names:
        path = out / name / "comparison.json"
        if not path.is_file():
            rows.append({"variant": name, "method": "?", "missing": True})
            continue
        results = json.loads(path.read_text())
        for method in sorted(results, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
            r = results[method]
            rows.append(
                {
                    "variant": name,
                    "method": method,
                    "held_out": r.get("held_out", {}),
                    "val": r.get("val", {}),
                    "train_samples": r.get("train_samples"),
                    "train_seconds": r.get("train_seconds"),
                    "trainable_parameters": r.get("trainable_parameters"),
                }
            )
    pins = [r for r in rows if r.get("method") == "pin" and r.get("val")]
    if pins:
        max(pins, key=lambda r: r["val"].get("miou", -1))["selected"] = True
    return {"rows": rows}


def _f(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table_markdown(merged: dict, title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| variant | method | mIoU | mIoU_M | mIoU_L | parsed | centre r | val mIoU | train samples | params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in merged["rows"]:
        if r.get("missing"):
            lines.append(f"| {r['variant']} | (did not finish) | | | | | | | | |")
            continue
        h, v = r["held_out"], r["val"]
        mark = " ← selected on val" if r.get("selected") else ""
        lines.append(
            f"| {r['variant']} | {r['method']}{mark} | {_f(h.get('miou'))} | {_f(h.get('miou_m'))} | "
            f"{_f(h.get('miou_l'))} | {_f(h.get('parse_ok'))} | {_f(h.get('center_corr'))} | {_f(v.get('miou'))} | "
            f"{_f(r.get('train_samples'))} | {_f(r.get('trainable_parameters'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/pin/table")
    parser.add_argument("--base_model", default=None)
    parser.add_argument("--variants", nargs="*", default=[], help='name:"extra recipe args" (one process each)')
    parser.add_argument("--common", default="", help="arguments given to every variant, e.g. '--train_images 12000'")
    parser.add_argument(
        "--preset", default="gpu", help="the recipe preset of every run (gpu: recipes/pin/toy_gpu.yaml)"
    )
    parser.add_argument("--stagger", type=float, default=5.0, help="seconds between launches")
    parser.add_argument("--merge-only", action="store_true")
    parser.add_argument("--title", default="PIN toy Table-1 analogue (held-out categories)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    variants = [parse_variant(v) for v in args.variants]
    names = [n for n, _ in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names must be unique, got {names}")
    if args.merge_only:
        names = names or sorted(p.parent.name for p in out.glob("*/comparison.json"))
    else:
        if not variants:
            raise SystemExit("give --variants (or --merge-only)")
        start = time.time()
        procs = {}
        for name, extra in variants:
            procs[name] = launch(name, extra, out, args.base_model, shlex.split(args.common), args.preset)
            time.sleep(args.stagger)
        for name, proc in procs.items():
            code = proc.wait()
            print(f"[pin_table] {name}: exit {code} after {time.time() - start:.0f} s", flush=True)
            if code != 0:
                print((out / name / "stdout.log").read_text()[-3000:], flush=True)
    merged = merge(out, names)
    previous = json.loads((out / "table.json").read_text()) if (out / "table.json").is_file() else {}
    merged["commit"] = os.environ.get("GIT_COMMIT") or previous.get("commit")
    launched = {n: e for n, e in variants if e}
    merged["variants"] = launched or previous.get("variants", {})
    (out / "table.json").write_text(json.dumps(merged, indent=2, default=float) + "\n")
    md = table_markdown(merged, args.title)
    (out / "table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
