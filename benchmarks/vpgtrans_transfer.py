"""Toy VPGTrans experiment (issue 3 acceptance; paper §4-5, Table 3, Fig. 7): TFS vs VPGInherit vs VPGTrans.

    python benchmarks/vpgtrans_transfer.py --preset gpu                  # everything (resumes finished runs)
    python benchmarks/vpgtrans_transfer.py --preset gpu --part size      # one transfer per call (10-min limits)
    python benchmarks/vpgtrans_transfer.py --preset gpu --part type
    python benchmarks/vpgtrans_transfer.py --preset gpu --part report

Source VL-LLM: the toy caption VL-LLM (`recipes/vpgtrans_captioner.py`, toy OPT-small), built first if missing,
or `--source <folder>` (e.g. the committed gpu-small captioner).
Transfers (targets frozen, as the paper):
- across size: OPT-small -> OPT-base (`toy:lm-opt-base`), same tokenizer (identity word pairs);
- across type: OPT-small -> T5 (`toy:lm-t5`), different tokenizers (same-length pairing, spec A2).
For each target: TFS (the source's frozen ViT, new Q-Former + projector, E epochs), VPGInherit (source VPG + random projector, E epochs)
and VPGTrans (converter; stage 1 = 1 epoch projector warm-up at 5x lr, counted as epoch 1; stage 2 = E - 1
epochs). Every epoch is evaluated zero-shot (caption CIDEr, VQA accuracy; decoding per spec A7 except the toy
caption min length). Output under `--out` (default runs/vpgtrans/benchmark_<preset>): the run folders,
`results.json` (curves + speed-up table), `results.md` (Table 3 form + per-epoch tables) and `fig7_<transfer>.png`.
Each finished run (its `model/` folder exists) is skipped on relaunch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

METRICS = ("cider", "vqa_accuracy")
TRANSFERS = {"size": ("OPT-small -> OPT-base", "toy:lm-opt-base"), "type": ("OPT-small -> T5", "toy:lm-t5")}
PRESET_EPOCHS = {"cpu": 3, "gpu": 6}


def _run(name: str, argv: list[str], out: Path) -> Path:
    from groundvlm.recipes import vpgtrans

    run_dir = out / name
    if (run_dir / "model").is_dir() or (run_dir / "converter.safetensors").is_file():
        print(f"[vpgtrans benchmark] {name}: done, skipped")
        return run_dir
    start = time.time()
    print(f"[vpgtrans benchmark] {name}: {' '.join(argv)}", flush=True)
    vpgtrans.main(argv + ["--output_dir", str(run_dir), "--no_resume"])
    print(f"[vpgtrans benchmark] {name}: {time.time() - start:.0f} s", flush=True)
    return run_dir


def source_model(preset: str, source: str | None) -> Path:
    """The source VL-LLM folder: `--source`, else the caption VL-LLM of the preset (built when missing)."""
    from groundvlm.recipes.vpgtrans_captioner import build_caption_vlm

    if source is not None:
        if not Path(source).is_dir():
            raise SystemExit(f"--source {source} is not a VL-LLM folder")
        return Path(source)
    folder = Path(f"runs/vpgtrans/captioner_{preset}/model")
    if not folder.is_dir():
        build_caption_vlm(folder.parent, preset)
    return folder


def source_vision(source: Path, out: Path) -> Path:
    """The source VL-LLM's frozen ViT as a `Blip2VisionModel` folder, so TFS starts from the same pretrained ViT
    as the transferred VPG. Its post-LayerNorm (LAVIS `ln_vision`, trained with the VPG) is reset to a fresh
    LayerNorm, as BLIP-2 adds a new `ln_vision` on top of the pretrained ViT."""
    import torch
    from groundvlm.modeling import VPGTransModel
    from groundvlm.processing import VPGTransProcessor

    folder = out / "source_vit"
    if not (folder / "config.json").is_file():
        vision = VPGTransModel.from_pretrained(source).vision_model
        with torch.no_grad():
            vision.post_layernorm.weight.fill_(1.0)
            vision.post_layernorm.bias.zero_()
        vision.save_pretrained(folder)
        VPGTransProcessor.from_pretrained(source).image_processor.save_pretrained(folder)
    return folder


def run_transfer(part: str, preset: str, out: Path, epochs: int, source: Path) -> dict:
    """The three methods for one target LLM; returns their curves."""
    from groundvlm.recipes.vpgtrans_speedup import read_curve, vpgtrans_curve

    sfx = "_gpu" if preset == "gpu" else ""
    lm = TRANSFERS[part][1]
    common = ["--preset", preset]
    vit = str(source_vision(source, out))
    tfs = _run(f"{part}/tfs", ["--config", f"tfs{sfx}", "--vision_model", vit, "--language_model", lm,
                               "--num_train_epochs", str(epochs)] + common, out)  # fmt: skip
    inherit = _run(f"{part}/inherit", ["--config", f"inherit{sfx}", "--source_model", str(source), "--language_model", lm,
                                       "--num_train_epochs", str(epochs)] + common, out)  # fmt: skip
    conv = _run(f"{part}/converter", ["--config", f"converter{sfx}", "--source_model", str(source), "--language_model", lm] + common, out)
    s1 = _run(f"{part}/stage1", ["--config", f"stage1{sfx}", "--init_model", str(conv / "model")] + common, out)
    s2 = _run(f"{part}/stage2", ["--config", f"stage2{sfx}", "--init_model", str(s1 / "model"),
                                 "--num_train_epochs", str(epochs - 1)] + common, out)  # fmt: skip
    return {"TFS": read_curve(tfs), "VPGInherit": read_curve(inherit), "VPGTrans": vpgtrans_curve(read_curve(s1), read_curve(s2))}


def report(out: Path, preset: str) -> str:
    from groundvlm.recipes.vpgtrans_speedup import (
        markdown_table,
        plot_curves,
        speedup_table,
    )

    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    rows, lines = {}, []
    for part, curves in results.get("curves", {}).items():
        title = TRANSFERS[part][0]
        rows[title] = speedup_table(curves["TFS"], curves["VPGTrans"], METRICS)
        try:
            plot_curves(curves, METRICS, out / f"fig7_{part}.png", title)
        except ImportError:  # a bare GPU machine may lack matplotlib: re-run `--part report` where it exists
            print(f"[vpgtrans benchmark] matplotlib missing: no fig7_{part}.png")
        lines += [f"\n#### {title}: per-epoch zero-shot scores\n", "| method | metric | " + " | ".join(
            f"ep {e}" for e in curves["TFS"]["epoch"]) + " |", "|---|---|" + "---|" * len(curves["TFS"]["epoch"])]  # fmt: skip
        for method, curve in curves.items():
            for m in METRICS:
                lines.append(f"| {method} | {m} | " + " | ".join(f"{v:.3f}" for v in curve.get(m, [])) + " |")
    text = "#### Speed-up rate (Table 3 form: e_tfs / e_vt, '-' = never better than TFS's best)\n\n"
    text += markdown_table(rows, METRICS) + "\n" + "\n".join(lines) + "\n"
    results["speedup"] = rows
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(f"preset {preset}; run info: see */run_info.json\n\n" + text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--part", choices=("all", "source", "size", "type", "report"), default="all")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per method (default: 3 cpu, 6 gpu)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--source", default=None, help="source VL-LLM folder (default: the preset's caption VL-LLM)")
    args = parser.parse_args(argv)
    if args.preset == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--preset gpu needs a CUDA device")
    out = Path(args.out or f"runs/vpgtrans/benchmark_{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or PRESET_EPOCHS[args.preset]
    if epochs < 2:
        raise SystemExit("--epochs must be >= 2 (VPGTrans = stage 1 + at least one stage-2 epoch)")
    if args.part in ("all", "source", "size", "type"):
        source = source_model(args.preset, args.source)
        for part in {"all": ["size", "type"], "source": [], "size": ["size"], "type": ["type"]}[args.part]:
            curves = run_transfer(part, args.preset, out, epochs, source)
            results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
            results.setdefault("curves", {})[part] = curves
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(report(out, args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
