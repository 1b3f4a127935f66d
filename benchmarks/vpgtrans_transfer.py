"""Toy VPGTrans experiment (VPGTrans paper, Sec. 4-5, Table 3, Fig. 7): TFS vs VPGInherit vs VPGTrans.

    python benchmarks/vpgtrans_transfer.py --preset tiny                 # CPU smoke run, a few minutes
    python benchmarks/vpgtrans_transfer.py --preset cpu                  # everything (resumes finished runs)
    python benchmarks/vpgtrans_transfer.py --preset gpu --part size      # one transfer per call
    python benchmarks/vpgtrans_transfer.py --preset gpu --part size --method tfs   # one method (parallel launches)
    python benchmarks/vpgtrans_transfer.py --preset gpu --part report
    bash benchmarks/vpgtrans_gpu.sh                                      # the one-call GPU run (see that script)

Source VL-LLM: `--source <folder>`; by default the committed caption VL-LLM `recipes/toy_checkpoints/vlm-caption`
for `tiny`, else the preset's caption VL-LLM (`recipes/systems/vpgtrans/captioner.py`, built first if missing).
Targets (frozen, as the paper) are toy LMs of the `--assets` preset (default: cpu for cpu, gpu for gpu, gpu-small
for tiny). The source's tokenizer must be that preset's: the committed captioner was built on gpu-small assets,
whose tokenizers equal the gpu preset's (same corpus), not the cpu/test presets'. Checked before training:
- across size: OPT-small -> OPT-base (`lm-opt-base`), the same tokenizer (identity word pairs);
- across type: OPT-small -> T5 (`lm-t5`), another tokenizer (the reference's same-length pairing).
`tiny` uses untrained LMs of the `test` preset's sizes on the `--assets` tokenizers, a handful of steps, 8 eval
images and 2 beams: it checks the plumbing (runs, curves, report), not the science.

For each target: TFS (the source's frozen ViT, new Q-Former + projector, E epochs), VPGInherit (source VPG + random
projector, E epochs) and VPGTrans (converter; stage 1 = 1 epoch projector warm-up at 5x lr, counted as epoch 1;
stage 2 = E - 1 epochs). Every epoch is evaluated zero-shot (caption CIDEr, VQA accuracy; decoding as the LAVIS eval configs
except the toy caption min length). Output under `--out` (default runs/vpgtrans/benchmark_<preset>): the run
folders `<part>/{tfs,inherit,converter,stage1,stage2}`, and from `--part report` (also run after every part):
`results.json` (curves, speed-up table, the epochs behind each rate, run times, provenance), `results.md`
(Table 3 form + per-epoch tables) and `fig7_<part>.png`. The report reads the curves from the run folders, so runs
of one part may be separate processes (`--method`), and a run cut short still reports the epochs it evaluated
(marked partial). A finished run (its `model/` folder exists) is skipped on relaunch. Flags after `--` go to every
recipe run (`recipes/vpgtrans.py`), e.g. `-- --converter_captions_per_batch 256`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groundvlm.recipes.common.provenance import git_commit

METRICS = ("cider", "vqa_accuracy")
# part -> (title, toy LM artefact of the target)
TRANSFERS = {"size": ("OPT-small -> OPT-base", "lm-opt-base"), "type": ("OPT-small -> T5", "lm-t5")}
METHODS = ("tfs", "inherit", "vpgtrans")
LABELS = {"tfs": "TFS", "inherit": "VPGInherit", "vpgtrans": "VPGTrans"}
# benchmark preset -> (suffix of the recipe configs, default toy-asset preset of the targets, default epochs)
PRESETS = {"tiny": ("", "gpu-small", 3), "cpu": ("", "cpu", 3), "gpu": ("_gpu", "gpu", 6)}
# The tiny preset's overrides of the cpu configs: 4 steps per epoch, 8 eval images, short decoding, on the CPU.
TINY_ARGS = [
    "--toy_train_size",
    "32",
    "--per_device_train_batch_size",
    "8",
    "--toy_eval_size",
    "8",
    "--eval_batch_size",
    "8",
    "--caption_num_beams",
    "2",
    "--vqa_num_beams",
    "2",
    "--caption_max_length",
    "12",
    "--vqa_max_length",
    "4",
    "--converter_captions",
    "256",
    "--use_cpu",
    "true",
    "--dataloader_num_workers",
    "0",
    "--logging_steps",
    "1",
]


def _run(name: str, argv: list[str], out: Path) -> Path:
    """One recipe run in `out/name`, skipped when it finished before; records its wall time in metrics.json."""
    from groundvlm.recipes.common.arguments import parse_recipe_args
    from groundvlm.recipes.common.run_dir import write_metrics
    from groundvlm.recipes.systems.vpgtrans.arguments import VPGTRANS_ARGUMENTS
    from groundvlm.recipes.systems.vpgtrans.stages import run_vpgtrans

    run_dir = out / name
    if (run_dir / "model").is_dir():
        print(f"[vpgtrans benchmark] {name}: done, skipped", flush=True)
        return run_dir
    start = time.time()
    print(f"[vpgtrans benchmark] {name}: {' '.join(argv)}", flush=True)
    # No checkpoints: a benchmark run that is cut short is started over (and still reports its evaluated epochs).
    try:
        argv = argv + ["--output_dir", str(run_dir), "--no_resume", "--save_strategy", "no"]
        run_vpgtrans(*parse_recipe_args(VPGTRANS_ARGUMENTS, argv, recipe="vpgtrans"))
    finally:
        _detach_log_file(run_dir)
    seconds = time.time() - start
    write_metrics(run_dir, "benchmark", {"wall_seconds": round(seconds, 1)})
    print(f"[vpgtrans benchmark] {name}: {seconds:.0f} s", flush=True)
    return run_dir


def _detach_log_file(run_dir: Path) -> None:
    """The recipe attaches `run_dir/train.log` to the loggers for its process; runs that share this process must not
    keep writing into the logs of the runs before them."""
    import logging

    from groundvlm.recipes.common.run_dir import LOG_NAME

    path = os.path.abspath(run_dir / LOG_NAME)
    for name in ("groundvlm", "transformers"):
        target = logging.getLogger(name)
        for handler in [h for h in target.handlers if getattr(h, "baseFilename", None) == path]:
            target.removeHandler(handler)
            handler.close()


def source_model(preset: str, source: str | None) -> Path:
    """The source VL-LLM folder: `--source`, else the committed captioner (tiny) or the preset's (built when missing)."""
    from groundvlm.recipes.systems.vpgtrans.captioner import build_caption_vlm
    from groundvlm.recipes.toyworld import COMMITTED_CAPTION_VLM

    if source is not None:
        if not (Path(source) / "config.json").is_file():
            raise SystemExit(f"--source {source} is not a VL-LLM folder (no config.json)")
        return Path(source)
    if preset == "tiny":
        return COMMITTED_CAPTION_VLM
    folder = Path(f"runs/vpgtrans/captioner_{preset}/model")
    if not folder.is_dir():
        build_caption_vlm(folder.parent, preset)
    return folder


def source_vision(source: Path, out: Path) -> Path:
    """The source VL-LLM's frozen ViT as a `Blip2VisionModel` folder, so TFS starts from the same pretrained ViT
    as the transferred VPG. Its post-LayerNorm (LAVIS `ln_vision`, trained with the VPG) is reset to a fresh
    LayerNorm, as BLIP-2 adds a new `ln_vision` on top of the pretrained ViT. Written to a temporary folder and
    renamed, so parallel runs of the benchmark never read a half-written one."""
    import torch

    from groundvlm.modeling import VPGTransModel
    from groundvlm.processing import VPGTransProcessor

    folder = out / "source_vit"
    if not (folder / "config.json").is_file():
        tmp = out / f".source_vit.{os.getpid()}"
        vision = VPGTransModel.from_pretrained(source).vision_model
        with torch.no_grad():
            vision.post_layernorm.weight.fill_(1.0)
            vision.post_layernorm.bias.zero_()
        vision.save_pretrained(tmp)
        VPGTransProcessor.from_pretrained(source).image_processor.save_pretrained(tmp)
        _rename_or_drop(tmp, folder)
    return folder


def target_lm(part: str, preset: str, assets: str, out: Path) -> Path:
    """The target LLM folder of `part`: the toy asset of the `assets` preset (built when missing), or for `tiny` an
    untrained LM of the test preset's size on that preset's tokenizer (built into `out/targets`)."""
    from groundvlm.recipes.toyworld import toy_asset

    name = TRANSFERS[part][1]
    if preset != "tiny":
        return toy_asset(name, assets)
    import torch
    from transformers import AutoTokenizer

    from groundvlm.recipes.toyworld import PRESETS as ASSET_PRESETS
    from groundvlm.recipes.toyworld.lms import LM_FAMILY, lm_model

    folder = out / "targets" / name
    if not (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(toy_asset(f"tokenizer-{LM_FAMILY[name[3:]]}", assets))
        torch.manual_seed(0)
        tmp = folder.with_name(f".{name}.{os.getpid()}")
        lm_model(name[3:], tokenizer, ASSET_PRESETS["test"].lm_sizes[name[3:]]).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _rename_or_drop(tmp, folder)
    return folder


def _rename_or_drop(tmp: Path, folder: Path) -> None:
    """Publish a folder written by this process; when a parallel run published it first, keep theirs."""
    try:
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp)


def check_tokenizers(part: str, source: Path, lm: Path) -> None:
    """Across size the target must share the source's tokenizer (the VL-LLM's own `<image>` aside); across type it
    must not. A target of another toy-asset preset than the source's has a differently trained tokenizer."""
    from transformers import AutoTokenizer

    from groundvlm.processing import VPGTransProcessor

    processor = VPGTransProcessor.from_pretrained(source)
    src = {t: i for t, i in processor.tokenizer.get_vocab().items() if i != processor.image_token_id}
    same = src == AutoTokenizer.from_pretrained(lm).get_vocab()
    if part == "size" and not same:
        raise SystemExit(
            f"Transfer across size needs the source's tokenizer, but {lm} has another one: take the targets from the "
            f"toy-asset preset the source was built on (--assets; the committed captioner: gpu-small or gpu)."
        )
    if part == "type" and same:
        raise SystemExit(
            f"Transfer across type expects another tokenizer than the source's, but {lm} has the same one."
        )


def run_transfer(
    part: str, preset: str, assets: str, out: Path, epochs: int, source: Path, methods=METHODS, extra: list[str] = ()
) -> None:
    """The chosen methods for one target LLM; each run writes its per-epoch curve into its folder."""
    sfx = PRESETS[preset][0]
    lm = str(target_lm(part, preset, assets, out))
    check_tokenizers(part, source, Path(lm))
    # Folders, not toy: names, are passed; --preset only records which toy assets the targets come from.
    common = ["--preset", assets] + (TINY_ARGS if preset == "tiny" else []) + list(extra)
    if "tfs" in methods:
        vit = str(source_vision(source, out))
        _run(
            f"{part}/tfs",
            ["--config", f"tfs{sfx}", "--vision_model", vit, "--language_model", lm, "--num_train_epochs", str(epochs)]
            + common,
            out,
        )
    if "inherit" in methods:
        _run(
            f"{part}/inherit",
            [
                "--config",
                f"inherit{sfx}",
                "--source_model",
                str(source),
                "--language_model",
                lm,
                "--num_train_epochs",
                str(epochs),
            ]
            + common,
            out,
        )
    if "vpgtrans" in methods:
        conv = _run(
            f"{part}/converter",
            ["--config", f"converter{sfx}", "--source_model", str(source), "--language_model", lm] + common,
            out,
        )
        s1 = _run(
            f"{part}/stage1",
            ["--config", f"stage1{sfx}", "--init_model", str(conv / "model"), "--num_train_epochs", "1"] + common,
            out,
        )
        _run(
            f"{part}/stage2",
            ["--config", f"stage2{sfx}", "--init_model", str(s1 / "model"), "--num_train_epochs", str(epochs - 1)]
            + common,
            out,
        )


def _curve(run_dir: Path) -> dict | None:
    """A run's logged eval curve, or None when the run has not evaluated an epoch yet."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    curve = json.loads(path.read_text(encoding="utf-8")).get("eval_curve")
    return curve if curve and curve.get("epoch") else None


def collect_curves(out: Path, part: str) -> dict[str, dict]:
    """{method label: curve} of the runs of `part` that evaluated at least one epoch; VPGTrans = stage 1 as epoch 1,
    then the stage-2 epochs (only stage 1 while stage 2 has no epoch yet)."""
    from groundvlm.recipes.systems.vpgtrans.speedup import vpgtrans_curve

    curves = {}
    for method in ("tfs", "inherit"):
        curve = _curve(out / part / method)
        if curve is not None:
            curves[LABELS[method]] = {k: curve[k] for k in ("epoch", *METRICS) if k in curve}
    s1, s2 = _curve(out / part / "stage1"), _curve(out / part / "stage2")
    if s1 is not None:
        curve = (
            vpgtrans_curve(s1, s2) if s2 is not None else {"epoch": [1], **{m: [s1[m][-1]] for m in METRICS if m in s1}}
        )
        curves["VPGTrans"] = {k: curve[k] for k in ("epoch", *METRICS) if k in curve}
    return curves


def _provenance() -> dict:
    import torch
    import transformers

    commit = git_commit()
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    return {
        "commit": commit,
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _run_settings(out: Path) -> dict:
    """Source VL-LLM and target toy-asset preset as the runs recorded them (their config.yaml), per part."""
    import yaml

    settings = {}
    for part in TRANSFERS:
        for name in ("converter", "inherit"):
            path = out / part / name / "config.yaml"
            if path.is_file():
                config = yaml.safe_load(path.read_text())
                settings[part] = {"source": config.get("source_model"), "assets": config.get("preset")}
                break
    return settings


def report(out: Path, preset: str, epochs: int) -> str:
    """results.json, results.md and fig7_<part>.png from the curves in the run folders; returns the markdown."""
    from groundvlm.recipes.common.checkpointing import replace_atomically
    from groundvlm.recipes.systems.vpgtrans.speedup import epochs_behind, markdown_table, plot_curves, speedup_table

    results = {
        "preset": preset,
        "planned_epochs": epochs,
        "runs": _run_settings(out),
        **_provenance(),
        "curves": {},
        "speedup": {},
        "epochs_behind": {},
        "partial": {},
        "wall_seconds": {},
    }
    rows, details, lines = {}, [], []
    for part, (title, _) in TRANSFERS.items():
        curves = collect_curves(out, part)
        if not curves:
            continue
        results["curves"][part] = curves
        short = {label: len(c["epoch"]) for label, c in curves.items() if len(c["epoch"]) < epochs}
        missing = [label for label in LABELS.values() if label not in curves]
        if short or missing:
            results["partial"][part] = {"epochs": short, "missing": missing}
        for name in ("tfs", "inherit", "converter", "stage1", "stage2"):
            path = out / part / name / "metrics.json"
            if path.is_file():
                wall = json.loads(path.read_text()).get("benchmark", {}).get("wall_seconds")
                results["wall_seconds"][f"{part}/{name}"] = wall
        if "TFS" in curves and "VPGTrans" in curves:
            rows[title] = speedup_table(curves["TFS"], curves["VPGTrans"], METRICS)
            results["epochs_behind"][part] = {
                m: epochs_behind(curves["TFS"][m], curves["VPGTrans"][m]) for m in METRICS if m in curves["TFS"]
            }
            for m, e in results["epochs_behind"][part].items():
                details.append(
                    f"| {title} | {m} | {e['tfs_best']:.3f} | {e['e_tfs']} | {e['e_vt'] or '-'} | {rows[title][m]} |"
                )
        try:
            plot_curves(curves, METRICS, out / f"fig7_{part}.png", title)
        except ImportError:  # no matplotlib: re-run `--part report` where it exists
            print(f"[vpgtrans benchmark] matplotlib missing: no fig7_{part}.png")
        n = max(len(c["epoch"]) for c in curves.values())
        lines += [
            f"\n#### {title}: per-epoch zero-shot scores (VPGTrans epoch 1 = stage 1)\n",
            "| method | metric | " + " | ".join(f"ep {e}" for e in range(1, n + 1)) + " |",
            "|---|---|" + "---|" * n,
        ]
        for label, curve in curves.items():
            for m in METRICS:
                values = [f"{v:.3f}" for v in curve.get(m, [])]
                lines.append(f"| {label} | {m} | " + " | ".join(values + [""] * (n - len(values))) + " |")
    results["speedup"] = rows
    text = "#### Speed-up rate (Table 3 form: e_tfs / e_vt, '-' = VPGTrans never better than TFS's best)\n\n"
    text += markdown_table(rows, METRICS) + "\n"
    if not results["curves"]:
        text += "\nNo run has evaluated an epoch yet (see the runs' train.log).\n"
    if details:
        text += (
            "\n| transfer | metric | TFS best p | e_tfs | e_vt | speed-up |\n|---|---|---|---|---|---|\n"
            + "\n".join(details)
            + "\n"
        )
    if results["partial"]:
        text += f"\n**Partial** (planned {epochs} epochs per method): {json.dumps(results['partial'])}\n"
    text += "\n".join(lines) + "\n"
    runs = "; ".join(f"{p}: source {r['source']}, target assets {r['assets']}" for p, r in results["runs"].items())
    header = (
        f"preset {preset}, {epochs} epochs per method ({runs}); {results['device']}, torch {results['torch']}, "
        f"transformers {results['transformers']}, commit {results['commit']}, {results['date']}\n\n"
    )
    for path, content in (
        (out / "results.json", json.dumps(results, indent=2) + "\n"),
        (out / "results.md", header + text),
    ):
        replace_atomically(path, lambda tmp, content=content: Path(tmp).write_text(content))
    return header + text


def report_seeds(dirs: list[Path], out: Path) -> str:
    """seeds.json and seeds.md: the speed-up (mean ± sample std over the seeds) from several `--out` folders of the
    same benchmark run with different recipe seeds (`-- --seed N`)."""
    from groundvlm.recipes.systems.vpgtrans.speedup import across_seeds, format_across_seeds, markdown_table

    results = {"seed_dirs": [str(d) for d in dirs], **_provenance(), "speedup": {}}
    rows = {}
    for part, (title, _) in TRANSFERS.items():
        curves = [collect_curves(d, part) for d in dirs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        stats = across_seeds(curves, METRICS)
        results["speedup"][part] = stats
        rows[title] = {m: format_across_seeds(stats[m]) for m in METRICS}
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown_table(rows, METRICS) + "\n"
    (out / "seeds.md").write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    parser.add_argument("--part", choices=("all", "source", "size", "type", "report", "seeds"), default="all")
    parser.add_argument(
        "--seed_dirs",
        nargs="+",
        type=Path,
        default=None,
        help="--part seeds: the --out folders of runs with other seeds",
    )
    parser.add_argument(
        "--method", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run (default all)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per method (default: 3 tiny/cpu, 6 gpu)")
    parser.add_argument(
        "--assets",
        choices=("cpu", "gpu", "gpu-small"),
        default=None,
        help="toy-asset preset of the target LMs (default: cpu for cpu, gpu for gpu, gpu-small for tiny)",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--source", default=None, help="source VL-LLM folder (default: see the docstring)")
    parser.add_argument(
        "--train_size", type=int, default=None, help="toy caption training images per epoch (default: the config's)"
    )
    parser.add_argument("--eval_batch_size", type=int, default=None, help="evaluation batch (default: the config's)")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers per run (default: the config's)")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, recipe_args = parser.parse_args(argv[:cut]), argv[cut + 1 :]
    if args.preset == "gpu" and args.part not in ("report", "source"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--preset gpu needs a CUDA device")
    if args.part == "seeds":
        if not args.seed_dirs or len(args.seed_dirs) < 2:
            raise SystemExit("--part seeds needs --seed_dirs with at least two run folders")
        print(report_seeds(args.seed_dirs, Path(args.out or "runs/vpgtrans/benchmark_seeds")))
        return 0
    out = Path(args.out or f"runs/vpgtrans/benchmark_{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    epochs = args.epochs or PRESETS[args.preset][2]
    if epochs < 2:
        raise SystemExit("--epochs must be >= 2 (VPGTrans = stage 1 + at least one stage-2 epoch)")
    assets = args.assets or PRESETS[args.preset][1]
    extra = list(recipe_args)  # flags after "--" go to every recipe run (the recipe rejects unknown ones)
    for flag, value in (
        ("--toy_train_size", args.train_size),
        ("--eval_batch_size", args.eval_batch_size),
        ("--dataloader_num_workers", args.workers),
    ):
        if value is not None:
            extra += [flag, str(value)]
    source = args.source
    if args.part != "report":
        source = source_model(args.preset, args.source)
        source_vision(source, out)  # before any parallel launch reads it
    for part in {"all": ["size", "type"], "size": ["size"], "type": ["type"]}.get(args.part, []):
        run_transfer(part, args.preset, assets, out, epochs, source, args.method, extra)
    if args.part == "report" or (args.part != "source" and set(args.method) == set(METHODS)):
        # Runs launched one method per process leave the report to a final `--part report`.
        print(report(out, args.preset, epochs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
