"""The recipes on 2 CPU processes (torch.distributed over gloo) against 1 process with the same global batch:
the same per-step loss, and the saved model loads.

`accelerate launch --cpu --num_processes 2` starts a single process (accelerate starts several CPU processes
only through mpirun), so the runs use recipes/accelerate_configs/cpu_2proc.yaml: torchrun starts the processes
and the recipes' `--use_cpu true` joins them over gloo.

Data parallelism splits each global batch of 2b samples into two b-sample halves (accelerate's
`BatchSamplerShard`: process k takes every other b-sized batch of the one sampler order), all-reduces the
gradients and logs the mean of the processes' losses. With dropout off, and token-mean LM losses normalised by
the step's token count over all processes (the Trainer's `num_items_in_batch`), this is the 1-process step on 2b
samples up to floating-point summation order: a sum over 2b samples in one kernel against two sums of b and a
gloo all-reduce. That order changes float32 results in the last bits (relative 1e-7 per sum), and Adam's
update divides by sqrt(v) + 1e-8, so a few steps move the loss by up to about 1e-5 relative here; rtol 1e-3
leaves room for other BLAS builds. Step 1 (same weights, same samples) is held to rtol 1e-5, which a wrong
normalisation fails (a token mean per process instead of per step is off by about 5e-4 relative at step 1 in the
Groma run); a duplicated instead of split batch gives a curve of twice the steps.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file
from transformers import Blip2Processor, Blip2VisionConfig, Blip2VisionModel, BlipImageProcessor, OPTForCausalLM

from groundvlm.modeling import GromaForConditionalGeneration, PinForLocalization, VPGTransModel
from groundvlm.recipes.systems.vpgtrans.arguments import VPGTransModelArguments
from groundvlm.recipes.systems.vpgtrans.models import build_from_scratch
from tests._groma_tiny import groma_tokenizer, tiny_groma_config, tiny_groma_processor
from tests._pin_tiny import make_tokenizer
from tests._vpgtrans_toys import VISION, opt_text_config, opt_tokenizer

REPO = Path(__file__).resolve().parents[2]
CPU_2PROC = REPO / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"
CPU_1PROC = REPO / "recipes" / "accelerate_configs" / "cpu.yaml"
COCO = REPO / "tests" / "fixtures" / "vpgtrans" / "coco"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, args: list[str], processes: int) -> str:
    """`accelerate launch` of `script` on `processes` CPU processes, one thread each; returns the output."""
    config = CPU_2PROC if processes == 2 else CPU_1PROC
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(processes), "--num_cpu_threads_per_process", "1"]  # fmt: skip
    if processes > 1:
        command += ["--main_process_port", str(_free_port())]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run([*command, str(script), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=240)  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result.stdout + result.stderr


def _losses(trainer_state: Path) -> list[float]:
    history = json.loads(trainer_state.read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _compare(run, script, args, batch, state_path, rtol):
    """Run 1 process x 2b and 2 processes x b; returns (one, two) output dirs after checking the loss curves."""
    one, two = run / "one", run / "two"
    _launch(script, [*args, "--output_dir", str(one), "--per_device_train_batch_size", str(2 * batch)], 1)
    _launch(script, [*args, "--output_dir", str(two), "--per_device_train_batch_size", str(batch)], 2)
    for folder, processes in ((one, 1), (two, 2)):
        assert json.loads((folder / "run_info.json").read_text())["distributed"]["num_processes"] == processes
    curve_one, curve_two = _losses(one / state_path), _losses(two / state_path)
    print(f"{script.name}: 1 process {curve_one}\n{script.name}: 2 processes {curve_two}")
    assert len(curve_one) == len(curve_two) >= 2
    # Step 1 runs the same weights on the same samples: only the summation order differs.
    torch.testing.assert_close(curve_two[0], curve_one[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(curve_two), torch.tensor(curve_one), rtol=rtol, atol=0)
    return one, two


RTOL = 1e-3  # see the module docstring
COMMON = ["--logging_steps", "1", "--seed", "3", "--use_cpu", "true", "--disable_tqdm", "true",
          "--dataloader_num_workers", "0", "--save_strategy", "steps", "--save_steps", "2", "--no_resume"]  # fmt: skip


def test_pin_two_processes_match_one(tmp_path):
    from tests.pin.test_pin_recipe import S, tiny_base

    tok = make_tokenizer()
    base = tmp_path / "base"
    tiny_base(tok).save_pretrained(base)
    Blip2Processor(BlipImageProcessor(size={"height": S, "width": S}), tok, num_query_tokens=4).save_pretrained(base)
    args = ["--base_model", str(base), "--methods", "pin", "--train_images", "8", "--val_images", "2",
            "--test_images", "2", "--epochs", "2", "--name_reconstruction_fraction", "0.5",
            *COMMON]  # fmt: skip
    # 16 samples (8 images x 2 passes), global batch 4: 4 steps.
    one, two = _compare(tmp_path, REPO / "tests" / "fixtures" / "pin_square_world.py", args, 2,
                        Path("pin") / "checkpoint-4" / "trainer_state.json", rtol=RTOL)  # fmt: skip
    for run in (one, two):
        assert PinForLocalization.from_pretrained(run / "pin" / "final").config.grid_size == 16
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["pin"]["train_samples"] == 16


def test_vpgtrans_stage1_two_processes_match_one(tmp_path):
    torch.manual_seed(0)
    tok = opt_tokenizer()
    lm, vit = tmp_path / "lm", tmp_path / "vit"
    config = opt_text_config(len(tok) + 1, hidden=24)
    config.dropout = config.attention_dropout = 0.0
    OPTForCausalLM(config).save_pretrained(lm)
    tok.save_pretrained(lm)
    Blip2VisionModel(Blip2VisionConfig(**VISION)).save_pretrained(vit)
    BlipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(vit)
    model_args = VPGTransModelArguments(num_query_tokens=4, qformer_hidden_size=32, qformer_heads=4, max_txt_len=16)
    model, processor = build_from_scratch(model_args, str(vit), str(lm))
    model.config.qformer_config.hidden_dropout_prob = model.config.qformer_config.attention_probs_dropout_prob = 0.0
    init = tmp_path / "init"
    model.save_pretrained(init)
    processor.save_pretrained(init)
    args = ["--stage", "stage1", "--init_model", str(init), "--dataset", "coco",
            "--train_file", str(COCO / "coco_karpathy_train.json"), "--image_root", str(COCO),
            "--max_steps", "4", "--learning_rate", "1e-2", "--eval_each_epoch", "false", "--max_txt_len", "16",
            *COMMON]  # fmt: skip
    one, two = _compare(tmp_path, REPO / "recipes" / "vpgtrans.py", args, 1,
                        Path("checkpoint-4") / "trainer_state.json", rtol=RTOL)  # fmt: skip
    for run in (one, two):
        assert VPGTransModel.from_pretrained(run / "model").config.num_query_tokens == 4


def _tiny_groma_folder(folder: Path) -> Path:
    """A saved tiny random Groma with its processor (dropout off), the start model of the Groma stages here."""
    tok = groma_tokenizer()
    config = tiny_groma_config(tok, proposer_dropout=0.0)
    torch.manual_seed(0)
    GromaForConditionalGeneration(config).save_pretrained(folder)
    tiny_groma_processor(tok, config).save_pretrained(folder)
    return folder


def test_groma_align_two_processes_match_one(tmp_path):
    start = _tiny_groma_folder(tmp_path / "start")
    args = ["--stage", "align", "--model_name_or_path", str(start), "--toy_train_scenes", "2",
            "--max_steps", "2", "--learning_rate", "1e-3", "--warmup_ratio", "0", *COMMON]  # fmt: skip
    one, two = _compare(tmp_path, REPO / "recipes" / "groma.py", args, 2,
                        Path("align") / "checkpoint-2" / "trainer_state.json", rtol=RTOL)  # fmt: skip
    for run in (one, two):
        GromaForConditionalGeneration.from_pretrained(run / "align" / "final")
    # The same global batch as 2 accumulated batches of 2 on one process: the loss is the step's token mean too.
    accumulated = tmp_path / "accumulated"
    _launch(REPO / "recipes" / "groma.py", [*args, "--output_dir", str(accumulated), "--per_device_train_batch_size",
                                            "2", "--gradient_accumulation_steps", "2"], 1)  # fmt: skip
    curve = _losses(accumulated / "align" / "checkpoint-2" / "trainer_state.json")
    torch.testing.assert_close(
        torch.tensor(curve),
        torch.tensor(_losses(one / "align" / "checkpoint-2" / "trainer_state.json")),
        rtol=1e-4,
        atol=0,
    )


def test_groma_det_trains_on_two_processes(tmp_path):
    """The det stage trains the proposer through its own forward (`ProposerDetection`), which DDP wraps. No loss
    parity: the flip augmentation draws from each process's generator and single-source batches are cut by
    the per-device batch size."""
    start = _tiny_groma_folder(tmp_path / "start")
    out = tmp_path / "det"
    args = ["--stage", "det", "--model_name_or_path", str(start), "--toy_train_scenes", "4", "--max_steps", "2",
            "--per_device_train_batch_size", "1", "--output_dir", str(out), *COMMON]  # fmt: skip
    _launch(REPO / "recipes" / "groma.py", args, 2)
    assert json.loads((out / "run_info.json").read_text())["distributed"]["num_processes"] == 2
    curve = _losses(out / "det" / "checkpoint-2" / "trainer_state.json")
    assert len(curve) == 2 and all(loss > 0 for loss in curve)
    trained = load_file(str(out / "det" / "checkpoint-2" / "trained.safetensors"))
    assert trained and all(name.startswith("region_proposer.") for name in trained)
    before = GromaForConditionalGeneration.from_pretrained(start).state_dict()
    after = GromaForConditionalGeneration.from_pretrained(out / "det" / "final").state_dict()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"region_proposer"}


def test_only_the_main_process_saves_the_final_model(tmp_path, monkeypatch):
    import accelerate

    from groundvlm.recipes.common.checkpointing import save_pretrained_once

    class Saver:
        def save_pretrained(self, directory):
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / "weights").write_text("w")

    waits = []

    class OtherRank:
        is_main_process = False

        def wait_for_everyone(self):
            waits.append(1)

    monkeypatch.setattr(accelerate, "PartialState", OtherRank)
    assert save_pretrained_once(tmp_path / "a", Saver()) == tmp_path / "a"
    assert not (tmp_path / "a").exists() and waits == [1]
    monkeypatch.setattr(accelerate, "PartialState", type("Main", (OtherRank,), {"is_main_process": True}))
    save_pretrained_once(tmp_path / "b", Saver(), Saver())
    assert (tmp_path / "b" / "weights").is_file() and waits == [1, 1]


def test_pin_results_are_written_by_the_main_process_only(tmp_path, monkeypatch):
    from groundvlm.recipes import pin as pin_recipe

    monkeypatch.setattr(pin_recipe, "PartialState", lambda: SimpleNamespace(is_main_process=False))
    pin_recipe.write_results(tmp_path, None, None)  # returns before it reads the arguments or the run
    assert list(tmp_path.iterdir()) == []


def test_fsdp_launch_on_cpu_processes_is_refused(tmp_path):
    """accelerate shards only over accelerators: the FSDP config launched with CPU processes would train plain
    data-parallel (checked: accelerate 1.16 reports MULTI_CPU and the 1-process loss curve). The recipe refuses it
    with a message naming the configs to use."""
    start = _tiny_groma_folder(tmp_path / "start")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "recipes" / "accelerate_configs" / "fsdp.yaml"), "--num_processes", "2", "--mixed_precision",
               "no", "--num_cpu_threads_per_process", "1", "--main_process_port", str(_free_port()),
               str(REPO / "recipes" / "groma.py"), "--stage", "align", "--model_name_or_path", str(start),
               "--toy_train_scenes", "2", "--max_steps", "1", "--output_dir", str(tmp_path / "run"), *COMMON]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "asks for FSDP" in result.stdout + result.stderr and "cpu_2proc.yaml" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "align").exists()
