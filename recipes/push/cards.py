"""Model cards for groundvlm checkpoints: `hub_cards/<system>.md` (jinja) filled from the saved folder and eval results.

`build_model_card(system, model_dir, eval_results, ...)` returns a `huggingface_hub.ModelCard` whose YAML header is a
`ModelCardData` (library `transformers`, pipeline tag, tags incl. `custom_code` and the system name, base model,
training datasets, `model-index` from the eval results) and whose body is the system's template: what the model is,
how to load it with `trust_remote_code=True`, intended use, training data, an evaluation table, limitations (incl.
the reference quirks reproduced) and the paper's citation. Rendering and saving work offline.

Eval results come in the layout the recipes write (`groundvlm.recipes.common.run_dir.write_metrics`):

    {"<section>": {"<metric>": value, "<split>": {"<metric>": value}, ...}, ...}

e.g. PIN's `{"pin": {"held_out": {"miou": 0.41, ...}, "val": {...}}, "raw": {...}}` or VPGTrans'
`{"eval": {"cider": 0.9, "vqa_accuracy": 0.5}, "eval_curve": {...}}`; a flat `{"<metric>": value}` is one section.
Only the system's own sections are read (PIN: `pin` — the other sections are baselines; VPGTrans: `eval`; Groma:
every section but `train`) unless `eval_sections` says otherwise. A numeric value whose key is one of the system's
metrics (`SYSTEMS[system].metrics`) becomes an `EvalResult`; the keys between the section and the metric name the
split; NaN values (e.g. an empty size bucket) and other keys are skipped. A section (or split dict) may name its
dataset with string keys `dataset_name` / `dataset_type`; otherwise `eval_dataset` (default: the toy world) is used.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# hub_cards/ is installed as the data package `groundvlm.hub_cards` (pyproject), so the templates are found from a
# checkout, an editable install and a wheel alike.
HUB_CARDS_DIR = Path(next(iter(importlib.util.find_spec("groundvlm.hub_cards").submodule_search_locations)))
TOY_WORLD_DATASET = "groundvlm-toyworld"  # dataset id used when results do not name their dataset


@dataclass(frozen=True)
class MetricSpec:
    """How one metric key of metrics.json reads on the Hub: the task it measures and a readable name."""

    task_type: str  # a Hub task id (model-index `task.type`)
    task_name: str
    metric_name: str


def _metrics(task_type: str, task_name: str, names: dict[str, str]) -> dict[str, MetricSpec]:
    return {key: MetricSpec(task_type, task_name, name) for key, name in names.items()}


_LOCALISATION = _metrics(
    "object-detection",
    "Object localisation",
    {
        "miou": "mIoU",
        "miou_s": "mIoU (small)",
        "miou_m": "mIoU (medium)",
        "miou_l": "mIoU (large)",
        "parse_ok": "parsed outputs (fraction)",
    },
)
_CAPTIONING = _metrics(
    "image-to-text",
    "Image captioning",
    {"cider": "CIDEr", "bleu_4": "BLEU-4", "meteor": "METEOR", "rouge_l": "ROUGE-L", "spice": "SPICE"},
)
_VQA = _metrics("visual-question-answering", "Visual question answering", {"vqa_accuracy": "VQA accuracy"})
_REC = _metrics(
    "zero-shot-object-detection",
    "Referring expression comprehension",
    # `rec_accuracy` writes accuracy@IoU≥0.5 as "accuracy" and the mean IoU as "miou"
    {"accuracy": "Acc@0.5", "rec_accuracy": "Acc@0.5", "miou": "mIoU"},
)
_PROPOSALS = _metrics(
    "object-detection",
    "Class-agnostic region proposal",
    {
        "ar": "AR",
        "ar50": "AR@0.5",
        "ar75": "AR@0.75",
        "ar_s": "AR (small)",
        "ar_m": "AR (medium)",
        "ar_l": "AR (large)",
    },
)


@dataclass(frozen=True)
class SystemSpec:
    """What differs between the three systems' cards."""

    model_type: str  # config.json's model_type of the folder
    template: str  # file in hub_cards/
    pipeline_tag: str
    tags: tuple[str, ...]
    eval_sections: tuple[str, ...] | None  # metrics.json sections read by default (None: all but "train")
    metrics: dict[str, MetricSpec] = field(default_factory=dict)


SYSTEMS: dict[str, SystemSpec] = {
    "pin": SystemSpec(
        model_type="pin",
        template="pin.md",
        pipeline_tag="image-text-to-text",
        tags=("custom_code", "pin", "object-localization", "vision-language", "positional-insert"),
        eval_sections=("pin",),
        metrics=_LOCALISATION,
    ),
    "vpgtrans": SystemSpec(
        model_type="vpgtrans",
        template="vpgtrans.md",
        pipeline_tag="image-text-to-text",
        tags=("custom_code", "vpgtrans", "blip-2", "vision-language", "image-captioning"),
        eval_sections=("eval",),
        metrics={**_CAPTIONING, **_VQA},
    ),
    "groma": SystemSpec(
        model_type="groma",
        template="groma.md",
        pipeline_tag="image-text-to-text",
        tags=("custom_code", "groma", "visual-grounding", "region-captioning", "vision-language"),
        eval_sections=None,
        metrics={**_REC, **_PROPOSALS, **_CAPTIONING, **_VQA},
    ),
}

_SKIPPED_SECTIONS = ("train",)


def system_spec(system: str) -> SystemSpec:
    if system not in SYSTEMS:
        raise ValueError(f"Unknown system {system!r}; model cards exist for {sorted(SYSTEMS)}")
    return SYSTEMS[system]


def system_of(model_dir: str | os.PathLike) -> str:
    """The system ("pin", "vpgtrans", "groma") a saved folder holds, from its config.json's `model_type`."""
    model_type = read_config(model_dir).get("model_type")
    for name, spec in SYSTEMS.items():
        if spec.model_type == model_type:
            return name
    raise ValueError(
        f"{model_dir}/config.json has model_type={model_type!r}, which is none of groundvlm's systems "
        f"({sorted(s.model_type for s in SYSTEMS.values())})"
    )


def read_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: pass a folder written by save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise TypeError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def load_eval_results(eval_results: dict | str | os.PathLike | None) -> dict:
    """`eval_results` as a dict: a dict is returned as is, a path is read as JSON (a metrics.json)."""
    if eval_results is None:
        return {}
    if isinstance(eval_results, (str, os.PathLike)):
        path = Path(eval_results)
        if not path.is_file():
            raise FileNotFoundError(f"eval results file {path} does not exist")
        try:
            eval_results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"eval results file {path} is not valid JSON: {err}") from None
    if not isinstance(eval_results, dict):
        raise TypeError(
            f"eval_results must be a dict ({{section: {{metric: value}}}}) or a path to metrics.json, got "
            f"{type(eval_results).__name__}"
        )
    return eval_results


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def eval_results_from_metrics(
    system: str,
    metrics: dict,
    eval_sections: list[str] | tuple[str, ...] | None = None,
    eval_dataset: str | None = None,
) -> list[EvalResult]:
    """`EvalResult`s for the recognised metrics of `metrics` (layout: see the module docstring).

    Args:
        system: "pin", "vpgtrans" or "groma" (decides which metric keys are recognised and how they read).
        metrics: `{section: {metric: value | {metric: value}}}` or a flat `{metric: value}`.
        eval_sections: sections to read; default: the system's (`SYSTEMS[system].eval_sections`). Named sections
            must exist.
        eval_dataset: dataset id for results that do not name their dataset (default: the toy world).
    """
    spec = system_spec(system)
    if not metrics:
        return []
    flat = not any(isinstance(v, dict) for v in metrics.values())
    sections = {"": metrics} if flat else metrics
    if not flat:
        wanted = list(eval_sections) if eval_sections is not None else spec.eval_sections
        if wanted is None:
            wanted = [name for name in sections if name not in _SKIPPED_SECTIONS]
        elif eval_sections is None:
            # The system's default sections: whichever of them were written (an eval-only run has no "train").
            wanted = [name for name in wanted if name in sections]
        missing = [name for name in wanted if name not in sections]
        if missing:
            raise ValueError(f"eval results have no section(s) {missing}; available: {sorted(sections)}")
        sections = {name: sections[name] for name in wanted}
    default_dataset = eval_dataset or TOY_WORLD_DATASET
    results = []

    def visit(node: dict, split: list[str], dataset: tuple[str, str]):
        if not isinstance(node, dict):
            return
        name = node.get("dataset_name", dataset[0])
        dataset_type = node.get("dataset_type", node.get("dataset_name", dataset[1]))
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value, split + [str(key)], (name, dataset_type))
            elif key in spec.metrics and _is_number(value) and math.isfinite(value):
                metric = spec.metrics[key]
                results.append(
                    EvalResult(
                        task_type=metric.task_type,
                        task_name=metric.task_name,
                        dataset_type=str(dataset_type),
                        dataset_name=str(name),
                        dataset_split="/".join(split) or None,
                        metric_type=key,
                        metric_name=metric.metric_name,
                        metric_value=round(float(value), 6),
                    )
                )

    for section_name, section in sections.items():
        if not isinstance(section, dict):
            raise TypeError(f"eval results section {section_name!r} must be a dict of metrics, got {section!r}")
        visit(section, [], (default_dataset, default_dataset))
    return results


def _parameter_count(folder: Path) -> int | None:
    """Parameters stored in `folder`'s top-level safetensors files (read from the headers, no tensor is loaded)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def is_local_path(ref: str) -> bool:
    """Whether a `base_model_name_or_path` is a filesystem path (only loadable on this machine), not a Hub id."""
    return os.path.isabs(ref) or ref.startswith((".", "~")) or os.path.exists(ref) or "\\" in ref


def _facts(system: str, config: dict) -> dict:
    """Architecture facts the system's template prints, from config.json."""
    text = config.get("text_config") or {}
    vision = config.get("vision_config") or {}
    if system == "pin":
        return {
            "base_architecture": config.get("base_architecture"),
            "base_model_type": config.get("base_model_type"),
            "base_reference": config.get("base_model_name_or_path"),
            "base_subfolder": config.get("base_subfolder"),
            "num_positions": config.get("num_positions"),
            "vision_hidden_size": config.get("vision_hidden_size"),
            "hidden_dims": config.get("hidden_dims"),
            "grid_size": config.get("grid_size"),
            "image_size": config.get("image_size"),
        }
    if system == "vpgtrans":
        return {
            "llm_type": text.get("model_type"),
            "llm_hidden_size": text.get("hidden_size", text.get("d_model")),
            "encoder_decoder": not config.get("use_decoder_only_language_model", True),
            "vision_hidden_size": vision.get("hidden_size"),
            "image_size": vision.get("image_size"),
            "num_query_tokens": config.get("num_query_tokens"),
        }
    return {
        "image_size": config.get("image_size"),
        "vision_hidden_size": vision.get("hidden_size"),
        "llm_type": text.get("model_type"),
        "llm_hidden_size": text.get("hidden_size"),
        "num_proxy_tokens": config.get("num_proxy_tokens"),
        "max_region_num": config.get("max_region_num"),
        "proposer_num_queries": config.get("proposer_num_queries"),
        "region_box_quirk": config.get("region_box_quirk", True),
        "legacy_pos_interpolation": config.get("vision_legacy_pos_interpolation", True),
    }


def _as_list(value: str | list[str] | tuple[str, ...] | None, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise TypeError(f"{name} must be a string or a list of strings, got {value!r}")


def build_model_card(
    system: str,
    model_dir: str | os.PathLike,
    eval_results: dict | str | os.PathLike | None = None,
    base_model: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    model_id: str | None = None,
    eval_sections: list[str] | tuple[str, ...] | None = None,
    eval_dataset: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card of the saved `model_dir` of `system` ("pin", "vpgtrans", "groma").

    Args:
        eval_results: a dict in metrics.json layout or the path of a metrics.json (see the module docstring).
        base_model: Hub id(s) of the model(s) this one was made from; PIN defaults to its config's base reference
            when that is a Hub id.
        datasets: Hub ids / names of the training data (the card's `datasets` and its training-data section).
        model_id: the repo id (`org/name`) the card is for; used in the loading snippet and as `model_name`.
        eval_sections, eval_dataset: see `eval_results_from_metrics`.
        license: an SPDX-like license id for the metadata (omitted when None).

    Returns:
        A `ModelCard` (`.data` holds the metadata, `str(card)` is README.md, `.save(path)` writes it).
    """
    spec = system_spec(system)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model_dir {model_dir} is not a folder")
    config = read_config(model_dir)
    if config.get("model_type") != spec.model_type:
        raise ValueError(
            f"{model_dir}/config.json has model_type={config.get('model_type')!r}, not {spec.model_type!r}: this "
            f"folder is not a {system} checkpoint"
        )
    facts = _facts(system, config)
    base_models = _as_list(base_model, "base_model")
    reference = facts.get("base_reference")
    if base_models is None and system == "pin" and reference and not is_local_path(reference):
        base_models = [reference]
    dataset_list = _as_list(datasets, "datasets")
    model_id = model_id or model_dir.resolve().name
    metrics = load_eval_results(eval_results)
    results = eval_results_from_metrics(system, metrics, eval_sections, eval_dataset)
    comparison = metrics.get("comparison")  # PIN's recipe writes {"verdict": "..."} there
    verdict = comparison.get("verdict") if isinstance(comparison, dict) else None
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=spec.pipeline_tag,
        tags=list(spec.tags),
        base_model=(base_models[0] if base_models and len(base_models) == 1 else base_models),
        datasets=dataset_list,
        license=license,
        model_name=model_id,
        metrics=sorted({r.metric_type for r in results}) or None,
        eval_results=results or None,
    )
    rows = [
        {
            "task": r.task_name,
            "dataset": r.dataset_name,
            "split": r.dataset_split or "–",
            "metric": r.metric_name,
            "value": f"{r.metric_value:.4g}",
        }
        for r in results
    ]
    template = HUB_CARDS_DIR / spec.template
    if not template.is_file():
        raise FileNotFoundError(f"model-card template {template} is missing (hub_cards/ of the groundvlm checkout)")
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_id=model_id,
        facts=facts,
        num_parameters=_parameter_count(model_dir),
        base_models=base_models or [],
        training_datasets=dataset_list or [],
        eval_rows=rows,
        verdict=verdict if isinstance(verdict, str) else None,
        toy_world_dataset=TOY_WORLD_DATASET,
    )


__all__ = [
    "HUB_CARDS_DIR",
    "SYSTEMS",
    "MetricSpec",
    "SystemSpec",
    "build_model_card",
    "eval_results_from_metrics",
    "is_local_path",
    "load_eval_results",
    "read_config",
    "system_of",
]
