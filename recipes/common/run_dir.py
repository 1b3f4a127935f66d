"""The run directory: one folder per run holding its resolved config, environment facts, log and metrics.

    runs/<recipe>/<run_name>/
        config.yaml      every argument of every dataclass, defaults included (`--config` it to re-run)
        run_info.json    versions, device, git commit, date, command line
        train.log        the recipe's log (logger `groundvlm`) and transformers' warnings
        metrics.json     {name: {metric: value}} written by `write_metrics`
        .lock            held (flock) by the run's main process while it runs: a second run into the same
                         directory stops with a message instead of interleaving its checkpoints and logs
        checkpoint-N/    written by the Trainer

Under `accelerate launch` every process calls these functions; only the main process writes, so N processes
do not race on one file.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from accelerate import PartialState

from groundvlm.recipes.common.arguments import RecipeError
from groundvlm.recipes.common.checkpointing import replace_atomically
from groundvlm.recipes.common.provenance import git_state

logger = logging.getLogger("groundvlm")

CONFIG_NAME = "config.yaml"
RUN_INFO_NAME = "run_info.json"
LOG_NAME = "train.log"
METRICS_NAME = "metrics.json"
LOCK_NAME = ".lock"

_held_locks: dict[str, Any] = {}
"""Open lock files of the run directories this process holds, by absolute path (kept open until exit)."""

_VERSIONED_PACKAGES = (
    "groundvlm",
    "torch",
    "torchvision",
    "transformers",
    "accelerate",
    "peft",
    "trl",
    "datasets",
    "evaluate",
    "safetensors",
    "tokenizers",
)


def _plain(value: Any) -> Any:
    """`value` as YAML/JSON-safe builtins (enums by value, paths and unknown objects as strings)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    return str(value)


def resolved_config(*arg_dataclasses: Any) -> dict[str, Any]:
    """All init fields of the given dataclass instances as one flat mapping, the shape `--config` reads.

    Secrets are never written: any field whose name ends in `_token` (e.g. `hub_token`) is recorded as `None`.
    """
    config: dict[str, Any] = {}
    for args in arg_dataclasses:
        if not (dataclasses.is_dataclass(args) and not isinstance(args, type)):
            raise TypeError(f"prepare_run_dir takes dataclass instances, got {type(args).__name__}.")
        for f in dataclasses.fields(args):
            if not f.init:
                continue
            value = None if f.name.endswith("_token") else getattr(args, f.name)
            config[f.name] = _plain(value)
    return config


def environment_facts() -> dict[str, Any]:
    """Versions, device, process layout, git commit, date and command line of the current process."""
    import torch

    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    state = PartialState()
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "device": {
            "type": state.device.type,
            "name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
            "cuda": torch.version.cuda if cuda else None,
            "count": torch.cuda.device_count() if cuda else 0,
        },
        "distributed": {"type": str(state.distributed_type.value), "num_processes": state.num_processes},
        "git": git_state(),
    }


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees either the old file or the whole new one, never a part."""
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def attach_log_file(run_dir: str | os.PathLike) -> Path:
    """Send the `groundvlm` logger (INFO and up) and transformers' logger to `run_dir/train.log` (appending).

    A relaunched run appends to the same file, so the log of a resumed run tells the whole story. Calling this
    twice for the same directory does not duplicate lines.
    """
    path = Path(run_dir) / LOG_NAME
    handler = None
    for name in ("groundvlm", "transformers"):
        target = logging.getLogger(name)
        if any(getattr(h, "baseFilename", None) == os.path.abspath(path) for h in target.handlers):
            continue
        if handler is None:
            handler = logging.FileHandler(path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        target.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return path


def _warn_on_changed_config(path: Path, config: dict[str, Any]) -> None:
    """A relaunch into an existing run directory (a resume) with different arguments is logged, key by key."""
    if not path.exists():
        return
    previous = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
    if changed:
        logger.warning(
            "Arguments differ from the previous launch in %s: %s; config.yaml now records this launch.",
            path.parent,
            ", ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in changed),
        )


def lock_run_dir(run_dir: str | os.PathLike) -> None:
    """Hold an exclusive lock on `run_dir` for the rest of this process; a run dir locked by another process is a
    `RecipeError` naming that process. The operating system drops the lock when the process ends, however it ends,
    so a killed run leaves no stale lock. Taking it again in the same process is a no-op. Without `fcntl`
    (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return
    path = Path(run_dir).resolve() / LOCK_NAME
    if str(path) in _held_locks:
        return
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RecipeError(
            f"Run directory {run_dir} is in use by {holder}. Wait for that run to finish, or give this one its "
            "own --output_dir (or --run_name)."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"pid {os.getpid()} on {platform.node()}, started {datetime.datetime.now().isoformat(timespec='seconds')}"
    )
    handle.flush()
    _held_locks[str(path)] = handle


def check_sharding_request(state: PartialState) -> None:
    """Refuse an FSDP launch whose processes run on the CPU. accelerate (1.16) turns a launch config's
    `distributed_type: FSDP` (`ACCELERATE_USE_FSDP=true` in the processes) into sharding only over accelerators; CPU
    processes (`--use_cpu true`, or no GPU) would train plain data-parallel with every process holding the whole
    model, and nothing would say so."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and state.device.type == "cpu":
        raise RecipeError(
            "the launch asks for FSDP (an accelerate config with distributed_type: FSDP, e.g. "
            "recipes/accelerate_configs/fsdp.yaml), but the processes run on the CPU, where accelerate does not shard: "
            "the run would be plain data parallelism. For data parallelism on the CPU launch with "
            "recipes/accelerate_configs/cpu_2proc.yaml; for FSDP launch on GPUs without --use_cpu."
        )


def prepare_run_dir(output_dir: str | os.PathLike, *arg_dataclasses: Any) -> Path:
    """Create the run directory and record how the run was made.

    Writes `config.yaml` (every field of every dataclass in `arg_dataclasses`, defaults included, flat — the
    shape `--config` reads) and `run_info.json` (`environment_facts()`), and attaches `train.log`. A relaunch
    into the same directory (a resume) rewrites both for the new launch and logs any argument that changed. The
    main process locks the directory first (`lock_run_dir`): a second run into it while the first one runs fails.
    Only the main process writes; every process gets the path back, after the main process has finished.

    Args:
        output_dir: the run directory (usually `training_args.output_dir`).
        *arg_dataclasses: the parsed argument dataclasses.

    Returns:
        `Path(output_dir)`.
    """
    run_dir = Path(output_dir)
    config = resolved_config(*arg_dataclasses)
    state = PartialState()
    check_sharding_request(state)
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(run_dir)
        attach_log_file(run_dir)
        _warn_on_changed_config(run_dir / CONFIG_NAME, config)
        header = "# Resolved configuration of this run: " + ", ".join(type(a).__name__ for a in arg_dataclasses) + "\n"
        _write_atomic(run_dir / CONFIG_NAME, header + yaml.safe_dump(config, sort_keys=False))
        _write_atomic(run_dir / RUN_INFO_NAME, json.dumps(environment_facts(), indent=2) + "\n")
        logger.info("Run directory %s (config: %s)", run_dir.resolve(), run_dir / CONFIG_NAME)
    state.wait_for_everyone()
    return run_dir


def json_safe(value: Any) -> Any:
    """`value` with NaN / infinities as None (JSON has no NaN: a metric undefined on its data, e.g. a correlation of
    constant boxes, is written as null) and numpy scalars as Python numbers; dicts, lists and tuples recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json_value(key: str, value: Any) -> Any:
    """A metric value as JSON: numbers, strings, bools, None, lists/dicts of those; scalar tensors via `.item()`;
    NaN and infinities as null (`json_safe`)."""
    if isinstance(value, float):
        return json_safe(value)
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if hasattr(value, "item") and tuple(getattr(value, "shape", (None,))) == ():
        return _json_value(key, value.item())  # numpy / torch scalars
    raise TypeError(f"Metric {key!r} has a value of type {type(value).__name__}, which JSON cannot hold.")


def write_metrics(run_dir: str | os.PathLike, name: str, metrics: dict[str, Any]) -> Path:
    """Record `metrics` under `name` in `run_dir/metrics.json`, atomically, keeping other names' entries.

    `metrics.json` maps names to metric dicts, e.g. `{"train": {...}, "eval_toy_val": {...}}`; writing a name
    again replaces its entry. The file is replaced in one `os.replace`, so a reader (or a crash) never sees a
    half-written file. Only the main process writes.

    Returns:
        The path of `metrics.json`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"write_metrics needs a non-empty metrics name, got {name!r}.")
    if not isinstance(metrics, dict):
        raise TypeError(f"write_metrics takes a dict of metrics, got {type(metrics).__name__}.")
    entry = {str(k): _json_value(str(k), v) for k, v in metrics.items()}
    path = Path(run_dir) / METRICS_NAME
    if PartialState().is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        existing[name] = entry
        _write_atomic(path, json.dumps(existing, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path
