"""Checkpoints that survive a kill: atomic safetensors files, and resuming from the last complete checkpoint.

`transformers.Trainer` already writes its checkpoints (`checkpoint-<step>/`) with the model weights as
safetensors (`model.safetensors`; transformers 5 has no pickle option left), plus optimizer, scheduler and RNG
state, and `trainer_state.json` *last*. A run killed while a checkpoint is being written therefore leaves a
folder without (or with a torn) `trainer_state.json`; `last_checkpoint` skips such folders, where
`transformers.trainer_utils.get_last_checkpoint` would pick them and the resume would crash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

logger = logging.getLogger("groundvlm")

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # the Trainer's folder name, PREFIX_CHECKPOINT_DIR-<step>


def save_safetensors_atomic(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Save `state_dict` as a safetensors file that is either fully written or not there at all.

    The tensors go to a temporary file in the same folder, which is flushed to disk (fsync) and then renamed
    over `path` with `os.replace` (atomic on POSIX and Windows). A crash or an error at any point leaves `path`
    as it was before — absent, or the previous complete file — and no temporary file behind.

    Args:
        state_dict: parameter name -> tensor (any shape, dtype and device; non-contiguous tensors are made
            contiguous, which does not change their values).
        path: the file to write, e.g. `run_dir / "pin.safetensors"`.
        metadata: optional string -> string header entries (safetensors allows nothing else).

    Returns:
        `Path(path)`.

    Raises:
        TypeError: a key is not a string, a value is not a tensor, or metadata is not str -> str.
        ValueError: two entries share memory (tied weights); safetensors cannot store aliases, so drop the tied
            copies (the model re-ties them on load) or clone them explicitly.
    """
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict of name -> torch.Tensor, got {type(state_dict).__name__}.")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be strings, got {key!r} ({type(key).__name__}).")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state_dict[{key!r}] is a {type(value).__name__}, not a torch.Tensor; safetensors stores tensors "
                "only (put non-tensor facts in `metadata` as strings)."
            )
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise TypeError(f"metadata must be a dict of str -> str, got {metadata!r}.")
    aliases = _overlapping_entries(state_dict)
    if aliases:
        raise ValueError(
            f"Entries of state_dict share memory: {aliases}. safetensors cannot store aliased tensors; keep one "
            "name of each group (and re-tie on load) or clone the others."
        )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().contiguous() for key, value in state_dict.items()}
    replace_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _fsync_dir(path.parent)
    return path


def replace_atomically(path: Path, write) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    A reader sees either the old file or the whole new one, never a part; on any error the temporary file is
    removed and the old file is left as it was.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _overlapping_entries(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """Pairs of entries whose memory overlaps (tied weights, views of one another); disjoint slices are fine."""
    spans: dict[tuple, list[tuple[int, int, str]]] = {}
    for key, value in state_dict.items():
        if value.numel() == 0:
            continue
        start = value.storage_offset() * value.element_size()
        extent = sum((size - 1) * stride for size, stride in zip(value.shape, value.stride())) + 1
        storage = (value.device, value.untyped_storage().data_ptr())
        spans.setdefault(storage, []).append((start, start + extent * value.element_size(), key))
    pairs = []
    for group in spans.values():
        group.sort()
        for (_, end, key), (next_start, _, next_key) in zip(group, group[1:]):
            if next_start < end:
                pairs.append((key, next_key))
    return pairs


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entry list, so that a rename into it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows cannot open folders
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(fd)


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """True when `folder` holds a `trainer_state.json` that parses — the Trainer writes it last."""
    state_file = Path(folder) / TRAINER_STATE_NAME
    try:
        json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The complete `checkpoint-<step>` folder of `output_dir` with the highest step, or None.

    Incomplete folders (a run killed while saving) are skipped with a warning.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))),
        reverse=True,
    )
    for _, folder in steps:
        if is_complete_checkpoint(folder):
            return str(folder)
        logger.warning("Skipping incomplete checkpoint %s (no readable %s).", folder, TRAINER_STATE_NAME)
    return None


class TrainingPaused(Exception):
    """A run stopped at its time budget (`--max_train_minutes`) after saving a checkpoint; the same command resumes
    it. Not an error: `run_recipe` prints the message and exits with `EXIT_PAUSED`."""

    def __init__(self, step: int, max_steps: int, checkpoint: str, minutes: float):
        self.step, self.max_steps, self.checkpoint = step, max_steps, checkpoint
        super().__init__(
            f"paused at step {step} of {max_steps} after the {minutes:g}-minute budget; checkpoint {checkpoint}. "
            "Run the same command again to resume."
        )


class TimeBudgetCallback(TrainerCallback):
    """Stop training at the first step end after `minutes` of wall time in this launch and save a checkpoint there
    (so a run can be split across calls of a machine that is lent for minutes at a time).

    In a distributed run the processes agree through a collective (and a host read), so they ask only every
    `distributed_every` steps -- at the same steps in every process -- and may run that many steps past the budget;
    alone, the check is a clock read at every step."""

    def __init__(self, minutes: float, distributed_every: int = 10):
        if distributed_every < 1:
            raise ValueError(f"distributed_every must be >= 1, got {distributed_every}.")
        self.seconds = minutes * 60.0
        self.every = distributed_every
        self.start = None
        self.fired = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if _world_size() > 1 and state.global_step % self.every:
            return control
        over = self.start is not None and time.monotonic() - self.start >= self.seconds
        if _any_process(over, args.device) and state.global_step < state.max_steps:
            self.fired = True
            control.should_save = True
            control.should_training_stop = True
        return control


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _any_process(flag: bool, device) -> bool:
    """`flag` of any process of a distributed run (every process gets the same answer, so all stop at the same step;
    one process stopping alone would leave the others waiting in their next collective)."""
    import torch.distributed as dist

    if _world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def train_resuming(
    trainer: Any,
    output_dir: str | os.PathLike | None = None,
    resume: bool | str = True,
    max_minutes: float | None = None,
):
    """`trainer.train()`, resuming from a checkpoint when there is one.

    Args:
        trainer: a `transformers.Trainer` (or trl trainer).
        output_dir: where to look for checkpoints; default `trainer.args.output_dir`.
        resume: `True` — resume from `trainer.args.resume_from_checkpoint` if set, else from
            `last_checkpoint(output_dir)`, else start from scratch; `False` — start from scratch; a path —
            resume from that checkpoint (it must be complete).
        max_minutes: a time budget for this launch: past it, the Trainer saves a checkpoint at the next step end and
            stops, and `TrainingPaused` is raised (the caller's final save and evaluation do not run).

    Returns:
        What `trainer.train` returns (`TrainOutput`).

    The Trainer restores model, optimizer, scheduler, RNG states and the global step, and skips the batches
    already seen in the current epoch, so a resumed run continues where the checkpoint left off.
    """
    output_dir = Path(output_dir if output_dir is not None else trainer.args.output_dir)
    if resume is True:
        checkpoint = trainer.args.resume_from_checkpoint or last_checkpoint(output_dir)
    elif resume is False:
        checkpoint = None
        if last_checkpoint(output_dir) is not None:
            logger.warning("resume=False: training from scratch; checkpoints in %s will be overwritten.", output_dir)
    elif isinstance(resume, (str, os.PathLike)):
        checkpoint = str(resume)
    else:
        raise TypeError(f"resume must be True, False or a checkpoint path, got {resume!r}.")

    if checkpoint is None:
        logger.info("No checkpoint to resume from in %s; training from scratch.", output_dir)
    else:
        if not is_complete_checkpoint(checkpoint):
            raise ValueError(
                f"Cannot resume from {checkpoint}: it is not a complete checkpoint (no readable {TRAINER_STATE_NAME})."
            )
        step = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text(encoding="utf-8"))["global_step"]
        logger.info("Resuming from checkpoint %s (global step %d).", checkpoint, step)
    budget = None
    if max_minutes is not None:
        if max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {max_minutes!r}.")
        budget = TimeBudgetCallback(max_minutes)
        trainer.add_callback(budget)
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        if budget is not None:
            trainer.remove_callback(budget)
    if budget is not None and budget.fired:
        step = trainer.state.global_step
        raise TrainingPaused(step, trainer.state.max_steps, str(output_dir / f"checkpoint-{step}"), max_minutes)
    if checkpoint is None:
        return output
    # The Trainer's `training_loss` sums only the losses of this launch and divides by the global step, so a
    # resumed run reports too low a loss (0.0 when resumed from its last step). The restored log history holds
    # the losses of the steps before the resume too.
    loss = whole_run_loss(trainer.state.log_history)
    if loss is None:
        logger.warning("Resumed run logged no training loss (logging_steps too large?); train_loss is unknown.")
        loss = float("nan")  # written as null by run_dir.write_metrics
    return output._replace(training_loss=loss, metrics={**output.metrics, "train_loss": loss})


def whole_run_loss(log_history: list[dict]) -> float | None:
    """The mean training loss over the logged steps of a whole run, resumes included.

    Each logged `loss` is the mean over the steps since the previous log, so each is weighted by its number of
    steps. Steps after the last log are not covered. Returns None when no loss was logged.
    """
    previous_step, total, steps = 0, 0.0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            interval = entry["step"] - previous_step
            total += entry["loss"] * interval
            steps += interval
            previous_step = entry["step"]
    return total / steps if steps else None


def save_pretrained_once(directory: str | os.PathLike, *objects: Any) -> Path:
    """`save_pretrained(directory)` of each of `objects` (a model, its processor) by the main process only.

    Under `accelerate launch` every process holds the same trained model; writing it from all of them would race
    on the same files. Every process returns once the folder is complete, so any of them may read it next.
    """
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        for obj in objects:
            obj.save_pretrained(directory)
    state.wait_for_everyone()
    return Path(directory)
