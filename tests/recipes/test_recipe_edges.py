"""New-user edges of the recipes: one clear message for the user's errors, a short --help, ranges checked at parse."""

import subprocess
import sys
from pathlib import Path

import pytest

from groundvlm.recipes.common.arguments import RecipeError, RunArguments, parse_recipe_args, run_recipe
from groundvlm.recipes.systems.groma.arguments import GromaArguments, GromaTrainingArguments
from groundvlm.recipes.systems.pin.arguments import PinArguments, PinTrainingArguments
from groundvlm.recipes.systems.vpgtrans.arguments import VPGTRANS_ARGUMENTS

REPO = Path(__file__).resolve().parents[2]
PIN = (RunArguments, PinArguments, PinTrainingArguments)
GROMA = (RunArguments, GromaArguments, GromaTrainingArguments)


def _parse(types, recipe, *argv):
    return parse_recipe_args(types, argv=["--output_dir", "unused", *argv], recipe=recipe)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_beams", "0"], "--num_beams must be a number > 0, got 0"),
        (["--epochs", "0"], "--epochs must be a number > 0, got 0"),
        (["--referral_probability", "1.5"], "--referral_probability must be a number in [0, 1]"),
        (["--feature_cache_dtype", "int8"], "--feature_cache_dtype must be float32 | float16 | bfloat16"),
        (["--method", "nope"], "unknown method 'nope'"),
    ],
)
def test_pin_arguments_checked_at_parse(argv, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("|", r"\|")):
        _parse(PIN, "pin", *argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stage", "bogus"], "--stage must be one of converter"),
        (["--stage", "stage1", "--caption_num_beams", "0"], "--caption_num_beams must be"),
        (["--stage", "stage1", "--qformer_hidden_size", "10", "--qformer_heads", "4"], "a multiple of --qformer_heads"),
        (["--stage", "stage1", "--num_train_epochs", "0"], "--num_train_epochs must be a number > 0"),
    ],
)
def test_vpgtrans_arguments_checked_at_parse(argv, message):
    with pytest.raises(RecipeError, match=message):
        _parse(VPGTRANS_ARGUMENTS, "vpgtrans", *argv)
    _parse(VPGTRANS_ARGUMENTS, "vpgtrans", "--stage", "stage1", "--num_train_epochs", "0", "--max_steps", "5")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--toy_num_objects", "3", "1"], "--toy_num_objects must be two numbers MIN MAX"),
        (["--eval_tasks", "rec", "detect"], "--eval_tasks must be of proposer"),
        (["--det_annotations", "a.json"], "one entry per json"),
        (["--eval_batch_size", "0"], "--eval_batch_size must be a number > 0"),
    ],
)
def test_groma_arguments_checked_at_parse(argv, message):
    with pytest.raises(RecipeError, match=message):
        _parse(GROMA, "groma", *argv)


def test_run_recipe_exits_with_the_message_alone(capsys):
    def main(argv):
        return _parse(PIN, "pin", *argv)

    with pytest.raises(SystemExit) as exit_info:
        run_recipe(main, ["--num_beams", "0"])
    assert exit_info.value.code == "error: --num_beams must be a number > 0, got 0."
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(main, ["--config", "no_such_config"])
    assert str(exit_info.value.code).startswith("error: Config 'no_such_config' is neither")
    assert run_recipe(lambda argv: argv, ["ok"]) == ["ok"]  # other results pass through

    def bug(argv):
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_recipe(bug)


def test_recipe_script_prints_one_line_on_a_bad_argument():
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "pin.py"), "--num_beams", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: --num_beams must be a number > 0, got 0."]


def test_help_shows_the_recipe_options_and_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(PIN, "pin", "--help")
    assert exit_info.value.code == 0
    short = capsys.readouterr().out
    for option in ("--config", "toy_gpu", "--num_beams", "--epochs", "--learning_rate", "--output_dir", "--help-all"):
        assert option in short, option
    assert "--adam_beta1" not in short
    assert len(short.splitlines()) < 250

    with pytest.raises(SystemExit):
        _parse(PIN, "pin", "--help-all")
    everything = capsys.readouterr().out
    assert "--adam_beta1" in everything and "--config" in everything and "--num_beams" in everything


def test_second_run_into_a_locked_run_dir_stops_with_a_message(tmp_path, monkeypatch):
    import fcntl
    import logging

    from groundvlm.recipes.common import run_dir as run_dir_module

    monkeypatch.setattr(run_dir_module, "_held_locks", {})
    monkeypatch.setattr(run_dir_module, "environment_facts", lambda: {})
    loggers = [logging.getLogger("groundvlm"), logging.getLogger("transformers")]
    handlers = [list(lg.handlers) for lg in loggers]
    run = tmp_path / "run"
    run.mkdir()
    other = open(run / run_dir_module.LOCK_NAME, "a+")  # another run holds the directory
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    other.write("pid 4242 on elsewhere")
    other.flush()
    try:
        with pytest.raises(RecipeError, match=r"in use by pid 4242 on elsewhere.*own --output_dir"):
            run_dir_module.prepare_run_dir(run)
        assert not (run / "config.yaml").exists()  # nothing written before the lock
    finally:
        other.close()
    run_dir_module.prepare_run_dir(run)
    run_dir_module.prepare_run_dir(run)  # the same process again (groma's stages): fine
    assert f"pid {__import__('os').getpid()}" in (run / run_dir_module.LOCK_NAME).read_text()
    for handle in run_dir_module._held_locks.values():
        handle.close()
    for lg, before in zip(loggers, handlers):
        for handler in lg.handlers[:]:
            if handler not in before:
                lg.removeHandler(handler)
                handler.close()


def test_errors_and_crashes_reach_train_log(tmp_path):
    import logging

    from groundvlm.recipes.common.run_dir import attach_log_file

    loggers = [logging.getLogger("groundvlm"), logging.getLogger("transformers")]
    before = [list(lg.handlers) for lg in loggers]
    try:
        log = attach_log_file(tmp_path)

        def bad_argument(argv):
            raise RecipeError("--epochs must be a number > 0, got 0.")

        def crash(argv):
            raise KeyError("no such column")

        with pytest.raises(SystemExit):
            run_recipe(bad_argument)
        with pytest.raises(KeyError):
            run_recipe(crash)
        text = log.read_text()
        assert "ERROR groundvlm: --epochs must be a number > 0, got 0." in text
        assert "The recipe failed" in text and "KeyError: 'no such column'" in text
    finally:
        for lg, handlers in zip(loggers, before):
            for handler in lg.handlers[:]:
                if handler not in handlers:
                    lg.removeHandler(handler)
                    handler.close()
