"""Train PIN (and its Table-1 baselines) on synthetic pasted-object scenes; evaluate zero-shot on held-out categories.

    accelerate launch recipes/pin.py                                  # toy default: 2 CPU cores, ~8 min
    accelerate launch recipes/pin.py --preset gpu                     # = --config toy_gpu: every baseline, larger
    accelerate launch recipes/pin.py --method coop                    # one method
    accelerate launch recipes/pin.py --base_model PATH --objects_dir XPASTE --backgrounds_dir BG20K \
        --eval_format coco --eval_annotations instances_val2017.json --eval_images val2017/

`--eval_format` picks the held-out evaluation set: `toy` (the held-out toy categories), a real set (`voc`, `coco`,
`lvis`, `refcoco`: `groundvlm.recipes.systems.pin.loaders` documents the files; RefCOCO adds P@0.3) or `none`
(validation only). Real sets are loaded before training, so a wrong path fails fast.

Pipeline (`groundvlm.recipes.systems.pin`): load the frozen base VL-LLM (default: the toy caption VLM, asset
"vlm-caption") and its processor; compose the training pools from the training categories only (plus validation
images of the same categories and a test pool of the held-out categories); cache the frozen vision encoder's
outputs; for every trained method run the `Trainer` (Adam, lr 1e-3, weight decay 0, loss on the target span only,
the reference curriculum); then generate boxes for every method. This script writes `comparison.md/json`,
`predictions.png` and `metrics.json` into the run directory. Each method trains in `<output_dir>/<method>/` and
resumes there.
"""

from __future__ import annotations

import json
import logging
import sys

from accelerate import PartialState

from groundvlm.recipes.common.arguments import RunArguments, parse_recipe_args, run_recipe
from groundvlm.recipes.common.run_dir import prepare_run_dir, write_metrics
from groundvlm.recipes.systems.pin.arguments import (
    PinArguments,
    PinTrainingArguments,
    selected_methods,
    with_preset_config,
)
from groundvlm.recipes.systems.pin.evaluation import comparison_table, prediction_grid, verdict, write_comparison
from groundvlm.recipes.systems.pin.loaders import REAL_FORMATS, prediction_records
from groundvlm.recipes.systems.pin.training import PinRun, run_methods

logger = logging.getLogger("groundvlm")


def write_results(run_dir, pin_args: PinArguments, run: PinRun) -> None:
    """The comparison table (md + json), the predictions grid and, on a real set, the predicted pixel boxes.

    Written by the main process only: under `accelerate launch` every process evaluates and holds the same
    results, and plain file writes from all of them would interleave in the same files."""
    if not PartialState().is_main_process:
        return
    where = {"toy": "held-out categories", "none": "validation"}.get(pin_args.eval_format, pin_args.eval_format)
    title = f"PIN comparison, {where} ({len(run.shown)} prompts), base {run.base_path}"
    write_comparison(run_dir, run.results, title)
    prediction_grid(run.shown, run.predictions, run_dir / "predictions.png", columns=pin_args.grid_columns)
    if pin_args.eval_format in REAL_FORMATS:  # boxes in pixels of the original images
        records = {m: prediction_records(run.test_samples, p) for m, p in run.predictions.items()}
        path = run_dir / f"predictions_{pin_args.eval_format}.json"
        path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    for method, entry in run.results.items():  # every method, the untrained baselines included
        write_metrics(run_dir, method, entry)
    lines = [comparison_table(run.results, title)]
    sentence = verdict(run.results)
    if sentence:
        write_metrics(run_dir, "comparison", {"verdict": sentence})  # the model card says it too (push_to_hub)
        lines.append(f"Verdict: {sentence}")
    for method, entry in run.results.items():
        if "p@0.3" in entry.get("held_out", {}):
            lines.append(f"RefCOCO {method}: P@0.3 = {entry['held_out']['p@0.3']:.3f}")
    lines.append(f"wrote {run_dir / 'comparison.md'}, {run_dir / 'comparison.json'}, {run_dir / 'predictions.png'}")
    print("\n".join(lines))
    logger.info("Results:\n%s", "\n".join(lines))  # train.log keeps them with the run


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns {method: results} (also written to the run directory)."""
    argv = with_preset_config(list(sys.argv[1:] if argv is None else argv))
    run_args, pin_args, training_args = parse_recipe_args(
        (RunArguments, PinArguments, PinTrainingArguments), argv=argv, recipe="pin"
    )
    methods = selected_methods(pin_args)
    run_dir = prepare_run_dir(training_args.output_dir, run_args, pin_args, training_args)
    run = run_methods(run_args, pin_args, training_args, run_dir, methods)
    write_results(run_dir, pin_args, run)
    return run.results


if __name__ == "__main__":
    run_recipe(main)
