"""Recipe plumbing: argument parsing, run directory, atomic checkpoints, accelerate configs, kill-and-resume."""

import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file, safe_open
from transformers import TrainingArguments
from transformers.trainer_utils import TrainOutput

from groundvlm.recipes.common import arguments, checkpointing, run_dir
from groundvlm.recipes.common.arguments import RunArguments, parse_recipe_args, resolve_config_path
from groundvlm.recipes.common.checkpointing import last_checkpoint, save_safetensors_atomic, train_resuming
from groundvlm.recipes.common.run_dir import prepare_run_dir, resolved_config, write_metrics

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "tests" / "fixtures" / "tiny_recipe.py"
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate_configs"


@dataclass
class ToyArguments:
    width: int = 3
    name: str = "toy"


@pytest.fixture
def restore_loggers():
    """prepare_run_dir attaches file handlers to process-wide loggers; detach them after the test."""
    loggers = [logging.getLogger("groundvlm"), logging.getLogger("transformers")]
    before = [list(lg.handlers) for lg in loggers]
    level = loggers[0].level
    yield
    for lg, handlers in zip(loggers, before):
        for handler in lg.handlers[:]:
            if handler not in handlers:
                lg.removeHandler(handler)
                handler.close()
    loggers[0].setLevel(level)


# ------------------------------------------------------------------------------------------------ arguments


def test_yaml_values_apply_and_command_line_wins(tmp_path):
    config = tmp_path / "stage1.yaml"
    config.write_text("learning_rate: 3.0e-4\nmax_steps: 5\nwidth: 7\npreset: gpu\n")
    run_args, toy_args, training_args = parse_recipe_args(
        (RunArguments, ToyArguments, TrainingArguments), ["--config", str(config), "--max_steps", "9"], recipe="toy"
    )
    assert run_args == RunArguments(preset="gpu", resume=True)
    assert toy_args == ToyArguments(width=7, name="toy")  # YAML value, and the dataclass default for `name`
    assert training_args.learning_rate == 3.0e-4  # from YAML
    assert training_args.max_steps == 9  # the command line beats the YAML's 5
    assert training_args.seed == 42  # untouched TrainingArguments default
    # Run-level defaults: run_name from the config's name, output_dir from recipe + run_name, no tracker.
    assert training_args.run_name == "stage1"
    assert training_args.output_dir == os.path.join("runs", "toy", "stage1")
    assert training_args.report_to == []


def test_run_name_and_output_dir_overrides(tmp_path):
    config = tmp_path / "stage1.yaml"
    config.write_text("run_name: from_yaml\n")
    *_, training_args = parse_recipe_args((RunArguments, TrainingArguments), [f"--config={config}"], recipe="toy")
    assert training_args.output_dir == os.path.join("runs", "toy", "from_yaml")
    *_, training_args = parse_recipe_args(
        (RunArguments, TrainingArguments), ["--config", str(config), "--run_name", "cli"], recipe="toy"
    )
    assert training_args.output_dir == os.path.join("runs", "toy", "cli")
    run_args, training_args = parse_recipe_args(
        (RunArguments, TrainingArguments), ["--output_dir", str(tmp_path / "out"), "--no_resume"], recipe="toy"
    )
    assert training_args.output_dir == str(tmp_path / "out") and training_args.run_name == "default"
    assert run_args.resume is False


def test_unknown_yaml_key_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("lerning_rate: 0.1\nwidth: 2\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        parse_recipe_args((ToyArguments, TrainingArguments), ["--config", str(config)], recipe="toy")
    config.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must hold a YAML mapping"):
        parse_recipe_args((ToyArguments,), ["--config", str(config)], recipe="toy")
    with pytest.raises(ValueError, match="--config needs a value"):
        parse_recipe_args((ToyArguments,), ["--config"], recipe="toy")


def test_resolve_config_path_finds_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.setattr(arguments, "RECIPES_DIR", tmp_path)
    (tmp_path / "toy").mkdir()
    shipped = tmp_path / "toy" / "stage2.yaml"
    shipped.write_text("width: 11\n")
    assert resolve_config_path("toy", "stage2") == shipped
    assert resolve_config_path("toy", "stage2.yaml") == shipped
    elsewhere = tmp_path / "mine.yaml"
    elsewhere.write_text("width: 1\n")
    assert resolve_config_path("toy", str(elsewhere)) == elsewhere
    with pytest.raises(FileNotFoundError, match=r"Configs shipped with 'toy': \['stage2'\]"):
        resolve_config_path("toy", "stage9")
    # A config name on the command line goes through the same lookup.
    (toy_args,) = parse_recipe_args((ToyArguments,), ["--config", "stage2"], recipe="toy")
    assert toy_args.width == 11


# ------------------------------------------------------------------------------------------------ run directory


def test_prepare_run_dir_writes_resolved_config_and_facts(tmp_path, restore_loggers):
    import transformers

    out = tmp_path / "run"
    parsed = parse_recipe_args(
        (RunArguments, ToyArguments, TrainingArguments),
        ["--output_dir", str(out), "--width", "5", "--hub_token", "secret"],
        recipe="toy",
    )
    assert prepare_run_dir(out, *parsed) == out

    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["width"] == 5 and written["name"] == "toy" and written["preset"] == "cpu"
    assert written["weight_decay"] == 0.0 and written["lr_scheduler_type"] == "linear"  # defaults are recorded too
    assert written["hub_token"] is None  # secrets never reach the run directory
    assert "secret" not in (out / "config.yaml").read_text()
    # `--config <run>/config.yaml` reproduces the same arguments (apart from the dropped secret).
    again = parse_recipe_args((RunArguments, ToyArguments, TrainingArguments), ["--config", str(out / "config.yaml")])
    assert resolved_config(*again) == resolved_config(*parsed)

    info = json.loads((out / "run_info.json").read_text())
    assert info["versions"]["transformers"] == transformers.__version__
    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["device"]["type"] == "cpu" and info["distributed"]["num_processes"] == 1
    assert info["git"] is None or len(info["git"]["commit"]) == 40
    assert datetime.datetime.fromisoformat(info["date"]).tzinfo is not None

    logging.getLogger("groundvlm.recipes.test").info("a line for the run log")
    assert "a line for the run log" in (out / "train.log").read_text()

    # Relaunching into the same directory with other arguments says what changed.
    changed = parse_recipe_args(
        (RunArguments, ToyArguments, TrainingArguments), ["--output_dir", str(out), "--width", "6"], recipe="toy"
    )
    prepare_run_dir(out, *changed)
    assert "width: 5 -> 6" in (out / "train.log").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["width"] == 6


def test_write_metrics_merges_and_is_atomic(tmp_path, monkeypatch):
    path = write_metrics(tmp_path, "train", {"loss": torch.tensor(0.5), "steps": 8})
    write_metrics(tmp_path, "eval", {"miou": 0.25, "buckets": {"small": 0.125}})
    write_metrics(tmp_path, "train", {"loss": 0.375})  # same name again replaces that entry only
    expected = {"eval": {"miou": 0.25, "buckets": {"small": 0.125}}, "train": {"loss": 0.375}}
    assert json.loads(path.read_text()) == expected

    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(run_dir.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_metrics(tmp_path, "eval", {"miou": 1.0})
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # and no temporary is left
    monkeypatch.undo()

    with pytest.raises(TypeError, match="'model'"):
        write_metrics(tmp_path, "bad", {"model": object()})


# ------------------------------------------------------------------------------------------------ checkpoints


def test_save_safetensors_atomic_round_trip(tmp_path):
    state = {
        "proj.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "proj.bias": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "table": torch.arange(12).reshape(3, 4).t(),  # non-contiguous view
        "steps": torch.tensor(7),
    }
    metadata = {"format": "pt", "base": "toy"}
    path = save_safetensors_atomic(state, tmp_path / "sub" / "pin.safetensors", metadata=metadata)
    loaded = load_file(path)
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    with safe_open(path, "pt") as f:
        assert f.metadata() == metadata
    assert sorted(p.name for p in path.parent.iterdir()) == ["pin.safetensors"]


def test_save_safetensors_atomic_rejects_bad_input_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    with pytest.raises(TypeError, match=r"state_dict\['step'\] is a int"):
        save_safetensors_atomic({"w": torch.ones(2), "step": 3}, path)
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors_atomic({"w": torch.ones(2)}, path, metadata={"epoch": 1})
    tied = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"share memory: \[\('embed', 'head'\)\]"):
        save_safetensors_atomic({"embed": tied, "head": tied}, path)
    assert not path.exists()

    save_safetensors_atomic({"w": torch.zeros(3)}, path)

    def save_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 16)  # a torn write
        raise OSError("killed mid-write")

    monkeypatch.setattr(checkpointing, "save_file", save_half_then_fail)
    with pytest.raises(OSError, match="killed mid-write"):
        save_safetensors_atomic({"w": torch.ones(3)}, path)
    assert torch.equal(load_file(path)["w"], torch.zeros(3))  # the previous complete file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_last_checkpoint_skips_incomplete_folders(tmp_path):
    assert last_checkpoint(tmp_path / "missing") is None
    assert last_checkpoint(tmp_path) is None
    for step, state in [(2, '{"global_step": 2}'), (10, '{"global_step": 10}'), (11, '{"global_st'), (12, None)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-99.tmp").mkdir()  # not a Trainer checkpoint name
    # 12 has no state (killed mid-save), 11 has a torn one; 10 beats 2 numerically (not as a string).
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


def test_train_resuming_picks_the_checkpoint(tmp_path):
    def fake_trainer(resume_from_checkpoint=None):
        # Records what Trainer.train would have been asked to resume from; reports a partial-run loss of 0.0.
        args = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=resume_from_checkpoint)
        state = SimpleNamespace(log_history=[{"loss": 1.5, "step": 3}, {"loss": 0.5, "step": 6}])
        train = lambda resume_from_checkpoint: TrainOutput(6, 0.0, {"from": resume_from_checkpoint, "train_loss": 0.0})
        return SimpleNamespace(args=args, state=state, train=train)

    def resumed_from(trainer, **kwargs):
        return train_resuming(trainer, **kwargs).metrics["from"]

    fresh = train_resuming(fake_trainer())
    assert fresh.metrics["from"] is None and fresh.training_loss == 0.0  # nothing saved yet: from scratch, as is
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-9").mkdir()  # torn
    resumed = train_resuming(fake_trainer())
    assert resumed.metrics["from"] == str(tmp_path / "checkpoint-6")
    # a resumed run reports the whole run's loss from the restored log history
    assert resumed.training_loss == resumed.metrics["train_loss"] == pytest.approx(1.0)
    assert resumed_from(fake_trainer(), resume=False) is None
    assert resumed_from(fake_trainer(), resume=str(tmp_path / "checkpoint-3")) == str(tmp_path / "checkpoint-3")
    # An explicit --resume_from_checkpoint in the training arguments beats "the last one".
    explicit = fake_trainer(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed_from(explicit) == str(tmp_path / "checkpoint-3")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        train_resuming(fake_trainer(), resume=str(tmp_path / "checkpoint-9"))
    with pytest.raises(TypeError, match="resume must be"):
        train_resuming(fake_trainer(), resume=1)


# ------------------------------------------------------------------------------------------------ accelerate configs


def test_accelerate_configs_load_with_installed_accelerate():
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    configs = {p.stem: ClusterConfig.from_yaml_file(str(p)) for p in ACCELERATE_CONFIGS.glob("*.yaml")}
    assert set(configs) == {"cpu", "cpu_2proc", "single_gpu", "multi_gpu", "fsdp"}
    # torchrun's launcher (MULTI_GPU) starts the two processes; --use_cpu puts them on gloo (test_recipe_ddp.py)
    assert configs["cpu_2proc"].distributed_type == DistributedType.MULTI_GPU and configs["cpu_2proc"].use_cpu
    assert configs["cpu_2proc"].num_processes == 2 and configs["cpu_2proc"].mixed_precision == "no"
    assert configs["cpu"].use_cpu and configs["cpu"].num_processes == 1 and configs["cpu"].mixed_precision == "no"
    assert configs["single_gpu"].distributed_type == DistributedType.NO and configs["single_gpu"].num_processes == 1
    assert configs["multi_gpu"].distributed_type == DistributedType.MULTI_GPU
    fsdp = configs["fsdp"]
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.mixed_precision == "bf16"
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    for name in ("single_gpu", "multi_gpu", "fsdp"):
        assert configs[name].mixed_precision == "bf16" and not configs[name].use_cpu


# ------------------------------------------------------------------------------------------------ kill and resume

TINY_ARGS = [
    "--max_steps",
    "8",
    "--save_steps",
    "2",
    "--per_device_train_batch_size",
    "4",
    "--num_examples",
    "24",
    "--learning_rate",
    "0.1",
    "--logging_steps",
    "1",
    "--seed",
    "7",
    "--use_cpu",
    "--disable_tqdm",
    "true",
]
# 24 examples / batch 4 = 6 steps per epoch: the resume at step 4 lands mid-epoch (the Trainer must skip the
# 4 batches already seen) and the run then crosses into a second epoch (a new shuffle).


def _launch(
    output_dir: Path, pause_at: int | None = None, accelerate: bool = True, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    """Start tiny_recipe.py as a user would, `accelerate launch --config_file cpu.yaml ...` (or plain python)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("GROUNDVLM_TEST_PAUSE_AT_STEP", None)
    if pause_at is not None:
        env["GROUNDVLM_TEST_PAUSE_AT_STEP"] = str(pause_at)
    launcher = [sys.executable]
    if accelerate:
        launcher += [
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(ACCELERATE_CONFIGS / "cpu.yaml"),
            "--num_cpu_threads_per_process",
            "1",
        ]
    # A new session, so that SIGKILL can reach the launcher and the training process it started.
    return subprocess.Popen(
        [*launcher, str(TINY_RECIPE), "--output_dir", str(output_dir), *TINY_ARGS, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]
    return output


def _logged_losses(checkpoint: Path) -> list[tuple[int, float]]:
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    reference_dir, run_dir_ = tmp_path / "uninterrupted", tmp_path / "killed"
    # The reference runs without the launcher only to spare 2 cores one more interpreter; cpu.yaml sets up
    # exactly what --use_cpu does (one process, fp32), so the two agree bit for bit.
    reference = _launch(reference_dir, accelerate=False)
    first = _launch(run_dir_, pause_at=4)
    try:
        marker = run_dir_ / "paused-at-4"
        deadline = time.monotonic() + 240  # a hang guard, not a speed assertion
        while not marker.exists():
            assert first.poll() is None, "the first run ended before pausing:\n" + first.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the first run never reached checkpoint-4"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)  # the whole session we started: launcher + training process
        first.wait(timeout=60)
        assert first.returncode == -signal.SIGKILL
        _finish(reference)
    finally:
        for process in (first, reference):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    # The kill hit a run still training: checkpoint-4 complete, nothing later, no final weights or metrics.
    assert sorted(p.name for p in run_dir_.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir_ / "final").exists() and not (run_dir_ / "metrics.json").exists()
    # Simulate a second kill that tore checkpoint-6 while it was being written: weights, but no trainer_state.
    torn = run_dir_ / "checkpoint-6"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 32)

    _finish(_launch(run_dir_))  # same arguments, no pause

    log = (run_dir_ / "train.log").read_text()
    assert "training from scratch" in log  # the first launch
    assert f"Skipping incomplete checkpoint {torn}" in log
    assert f"Resuming from checkpoint {run_dir_ / 'checkpoint-4'} (global step 4)." in log

    resumed_state = json.loads((run_dir_ / "checkpoint-8" / "trainer_state.json").read_text())
    reference_state = json.loads((reference_dir / "checkpoint-8" / "trainer_state.json").read_text())
    assert resumed_state["global_step"] == reference_state["global_step"] == 8
    # The step count continued from 4: the history holds steps 1-4 (restored) and 5-8 (trained after resume).
    resumed_losses = _logged_losses(run_dir_ / "checkpoint-8")
    reference_losses = _logged_losses(reference_dir / "checkpoint-8")
    assert [step for step, _ in resumed_losses] == list(range(1, 9))
    # Exact resume: the Trainer restores weights, AdamW moments, the LR schedule, the RNG states (dropout) and
    # the data order (seeded sampler, skipping the batches already seen), so on the same CPU with one thread
    # every later step repeats the uninterrupted run's arithmetic and the final weights are bit-identical.
    # (The Trainer warns that `lm_head.weight` is missing when it loads checkpoint-4: it is the tied copy of
    # `embed.weight`, which save_pretrained rightly leaves out; the tie survives the load.)
    assert [s for s, _ in reference_losses] == list(range(1, 9))
    resumed_values = torch.tensor([loss for _, loss in resumed_losses])
    assert torch.allclose(resumed_values, torch.tensor([loss for _, loss in reference_losses]), atol=1e-4)
    resumed_weights = load_file(run_dir_ / "final" / "model.safetensors")
    reference_weights = load_file(reference_dir / "final" / "model.safetensors")
    assert set(resumed_weights) == set(reference_weights) == {"embed.weight", "mix.weight", "mix.bias"}
    initial_weights = load_file(run_dir_ / "checkpoint-2" / "model.safetensors")
    for key in reference_weights:
        assert torch.equal(resumed_weights[key], reference_weights[key]), key
        assert not torch.allclose(resumed_weights[key], initial_weights[key]), key  # training did move them
    # The resumed run's reported loss covers all 8 steps, not only the 4 after the resume (the Trainer's own
    # `training_loss` would be the sum of steps 5-8 divided by 8).
    resumed_metrics = json.loads((run_dir_ / "metrics.json").read_text())["train"]
    reference_metrics = json.loads((reference_dir / "metrics.json").read_text())["train"]
    assert resumed_metrics["train_loss"] == pytest.approx(reference_metrics["train_loss"], abs=1e-4)


def test_time_budget_pauses_with_a_checkpoint_and_the_same_command_resumes(tmp_path):
    out = tmp_path / "budget"
    # A budget far below one step: the run stops at the end of step 1, saves checkpoint-1 and exits with status 3.
    first = _launch(out, accelerate=False, extra=("--max_train_minutes", "1e-6"))
    output, _ = first.communicate(timeout=300)
    assert first.returncode == arguments.EXIT_PAUSED, output[-4000:]
    assert "paused at step 1 of 8" in output and "Run the same command again to resume" in output
    assert checkpointing.is_complete_checkpoint(out / "checkpoint-1")
    assert not (out / "final").exists() and not (out / "metrics.json").exists()  # no final save, no metrics

    _finish(_launch(out, accelerate=False))  # the same command without the budget finishes the run
    assert f"Resuming from checkpoint {out / 'checkpoint-1'} (global step 1)." in (out / "train.log").read_text()
    assert json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8
    assert (out / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("minutes", ["0", "-2"])
def test_time_budget_must_be_positive(minutes):
    with pytest.raises(arguments.RecipeError, match="--max_train_minutes must be a number > 0"):
        parse_recipe_args((RunArguments, TrainingArguments), ["--max_train_minutes", minutes], recipe="tiny")


def test_whole_run_loss_weights_each_logged_interval_by_its_steps():
    history = [{"loss": 2.0, "step": 2}, {"eval_loss": 9.0, "step": 2}, {"loss": 1.0, "step": 6}, {"train_loss": 0.0}]
    assert checkpointing.whole_run_loss(history) == pytest.approx((2.0 * 2 + 1.0 * 4) / 6)
    assert checkpointing.whole_run_loss([{"train_loss": 0.0, "step": 8}]) is None


def test_write_metrics_writes_undefined_values_as_null_never_bare_nan(tmp_path):
    nan = float("nan")
    path = write_metrics(tmp_path, "eval", {"r": nan, "n": {"inf": float("inf")}, "t": torch.tensor(nan), "x": [nan]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"eval": {"r": None, "n": {"inf": None}, "t": None, "x": [None]}}


def _any_process_worker(rank: int, port: int, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = checkpointing._any_process(rank == 0, "cpu")  # only rank 0 is over its budget
    finally:
        dist.destroy_process_group()


def test_time_budget_stops_every_process_at_the_same_step():
    """On two processes whose clocks disagree, the budget check gives both the same answer (one process stopping
    alone would leave the other waiting in its next all-reduce)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_any_process_worker, args=(port, results), nprocs=2, join=True)
    assert dict(results) == {0: True, 1: True}
    assert checkpointing._any_process(False, "cpu") is False  # no process group: the process's own flag


def _budget_worker(rank: int, port: int, results):
    from types import SimpleNamespace

    import torch.distributed as dist
    from transformers import TrainerControl

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        callback = checkpointing.TimeBudgetCallback(minutes=1.0, distributed_every=4)
        callback.start = 0.0 if rank == 0 else float("inf")  # rank 0 is far over its budget, rank 1 never is
        args = SimpleNamespace(device="cpu")
        stopped = None
        for step in range(1, 10):
            control = TrainerControl()
            callback.on_step_end(args, SimpleNamespace(global_step=step, max_steps=100), control)
            if control.should_training_stop:
                stopped = step
                break
        results[rank] = stopped
    finally:
        dist.destroy_process_group()


def test_time_budget_asks_the_other_processes_only_every_few_steps():
    """Distributed, the budget's collective runs only at every `distributed_every`-th step, the same steps in every
    process: both stop together at the first such step past the budget (not at every step's host sync)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_budget_worker, args=(port, results), nprocs=2, join=True)
    assert dict(results) == {0: 4, 1: 4}
    with pytest.raises(ValueError, match="distributed_every"):
        checkpointing.TimeBudgetCallback(1.0, distributed_every=0)


def test_flag_helpers_read_and_drop_a_flag_as_argparse_sees_it():
    argv = ["--preset", "gpu", "--stage=det", "--x", "1", "--preset", "cpu"]
    assert arguments.flag_value(argv, "--preset") == "cpu"  # the last one wins, as in argparse
    assert arguments.flag_value(argv, "--stage") == "det"
    assert arguments.flag_value(argv, "--missing", "d") == "d"
    assert arguments.without_flag(argv, "--preset") == ["--stage=det", "--x", "1"]
    assert arguments.without_flag(argv, "--stage") == ["--preset", "gpu", "--x", "1", "--preset", "cpu"]
