"""VPGTrans speed-up rate (VPGTrans paper, Table 3) and the Fig. 7-style convergence plot, from logged eval curves.

For a dataset D, training from scratch (TFS) reaches its best score p at epoch e_tfs (the first epoch with that
score); VPGTrans first achieves a *better* score than p at epoch e_vt. The speed-up rate is e_tfs / e_vt, shown
with one decimal; "-" when VPGTrans never beats p. The whole of stage 1 counts as VPGTrans's first epoch (the
converter, minutes long, is not counted): the VPGTrans curve is [stage-1 result] + [stage-2 epoch results].

    python recipes/systems/vpgtrans/speedup.py --tfs runs/vpgtrans/tfs --stage1 runs/vpgtrans/stage1 \
        --stage2 runs/vpgtrans/stage2 [--inherit runs/vpgtrans/inherit] --plot fig7.png

Curves are read from each run directory's `metrics.json["eval_curve"]` (written by recipes/vpgtrans.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

CURVE_NAME = "eval_curve"


def epochs_behind(tfs: Sequence[float], vpgtrans: Sequence[float]) -> dict:
    """For per-epoch scores (index 0 = epoch 1): TFS's best p (`tfs_best`), the first epoch it is reached (`e_tfs`)
    and VPGTrans's first epoch above p (`e_vt`, None when never)."""
    if not tfs or not vpgtrans:
        raise ValueError("speedup_rate needs non-empty TFS and VPGTrans curves.")
    best = max(tfs)
    e_vt = next((i + 1 for i, score in enumerate(vpgtrans) if score > best), None)
    return {"tfs_best": best, "e_tfs": list(tfs).index(best) + 1, "e_vt": e_vt}


def speedup_rate(tfs: Sequence[float], vpgtrans: Sequence[float]) -> float | None:
    """e_tfs / e_vt for per-epoch scores (index 0 = epoch 1); None when VPGTrans never exceeds TFS's best."""
    epochs = epochs_behind(tfs, vpgtrans)
    return None if epochs["e_vt"] is None else epochs["e_tfs"] / epochs["e_vt"]


def format_rate(rate: float | None) -> str:
    """Table 3's form: one decimal, "-" when never reached."""
    return "-" if rate is None else f"{rate:.1f}"


def across_seeds(curves_per_seed: Sequence[dict[str, dict[str, list]]], metrics: Sequence[str]) -> dict:
    """The speed-up over several seeds of one transfer: per seed e_tfs / e_vt (None when VPGTrans never beat TFS's
    best), and their mean and sample standard deviation over the seeds where it is defined.

    Args:
        curves_per_seed: one `{"TFS": curve, "VPGTrans": curve, ...}` per seed (curves as `read_curve` returns).
        metrics: the metrics to rate (those missing from a seed's curves are skipped for that seed).
    """
    out = {}
    for metric in metrics:
        rates = [
            speedup_rate(c["TFS"][metric], c["VPGTrans"][metric])
            for c in curves_per_seed
            if "TFS" in c and "VPGTrans" in c and metric in c["TFS"] and metric in c["VPGTrans"]
        ]
        defined = [r for r in rates if r is not None]
        mean = statistics.mean(defined) if defined else None
        std = statistics.stdev(defined) if len(defined) > 1 else None
        out[metric] = {"per_seed": rates, "mean": mean, "std": std, "never": rates.count(None)}
    return out


def format_across_seeds(stats: dict) -> str:
    """ "1.4 ± 0.3 (3 seeds)", with the seeds where VPGTrans never beat TFS's best counted apart."""
    n = len(stats["per_seed"])
    if stats["mean"] is None:
        return f"- ({n} of {n} seeds never)"
    text = f"{stats['mean']:.1f}" + (f" ± {stats['std']:.1f}" if stats["std"] is not None else "")
    return text + f" ({n} seeds" + (f", {stats['never']} never" if stats["never"] else "") + ")"


def read_curve(run_dir: str | Path) -> dict[str, list]:
    """`metrics.json["eval_curve"]` of a run directory (`{"epoch": [...], "<metric>": [...]}`)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a vpgtrans run directory?")
    curve = json.loads(path.read_text(encoding="utf-8")).get(CURVE_NAME)
    if not curve or not curve.get("epoch"):
        raise ValueError(f"{path} holds no '{CURVE_NAME}' (run the stage with eval_each_epoch).")
    return curve


def vpgtrans_curve(stage1: dict[str, list], stage2: dict[str, list]) -> dict[str, list]:
    """Stage 1's final result as epoch 1, then stage 2's epochs as 2, 3, ... (VPGTrans paper, Sec. 4.1)."""
    keys = [k for k in stage2 if k not in ("epoch", "step") and k in stage1]
    out = {k: [stage1[k][-1]] + list(stage2[k]) for k in keys}
    out["epoch"] = list(range(1, len(stage2["epoch"]) + 2))
    return out


def speedup_table(tfs: dict[str, list], vpgtrans: dict[str, list], metrics: Sequence[str]) -> dict[str, str]:
    """{metric: formatted speed-up} for the metrics both curves hold."""
    return {m: format_rate(speedup_rate(tfs[m], vpgtrans[m])) for m in metrics if m in tfs and m in vpgtrans}


def markdown_table(rows: dict[str, dict[str, str]], metrics: Sequence[str]) -> str:
    """Table 3 layout: one row per transfer, one column per dataset/metric."""
    lines = ["| Transfer | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, rates in rows.items():
        lines.append(f"| {name} | " + " | ".join(rates.get(m, "n/a") for m in metrics) + " |")
    return "\n".join(lines)


def plot_curves(curves: dict[str, dict[str, list]], metrics: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Fig. 7-style plot: one panel per metric, score vs epoch for each method (TFS / inherit / VPGTrans)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, curve in curves.items():
            if metric in curve:
                ax.plot(curve["epoch"], curve[metric], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tfs", required=True)
    parser.add_argument("--stage1", required=True)
    parser.add_argument("--stage2", required=True)
    parser.add_argument("--inherit")
    parser.add_argument("--metrics", nargs="+", default=["cider", "vqa_accuracy"])
    parser.add_argument("--name", default="VPGTrans")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    tfs = read_curve(args.tfs)
    vt = vpgtrans_curve(read_curve(args.stage1), read_curve(args.stage2))
    print(markdown_table({args.name: speedup_table(tfs, vt, args.metrics)}, args.metrics))
    if args.plot:
        curves = {"TFS": tfs, "VPGTrans": vt}
        if args.inherit:
            curves["VPGInherit"] = read_curve(args.inherit)
        print("plot:", plot_curves(curves, args.metrics, args.plot, args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
