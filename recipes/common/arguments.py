"""Recipe arguments: dataclasses filled from `--config <yaml>` plus command-line overrides.

Every recipe (`recipes/pin.py`, `recipes/vpgtrans.py`, `recipes/groma.py`) parses its arguments the way trl's
example scripts do — `TrlParser` over a tuple of dataclasses — with three additions:

- `--config` takes a real path *or* the name of a config shipped with the recipe (`--config stage1` finds
  `recipes/<recipe>/stage1.yaml` inside the installed package);
- a key in the YAML that is no field of any dataclass is an error naming the key (trl would report it as a
  leftover `--key value` pair, after the fact);
- run-level defaults that make a relaunch land in the same place, so that it can resume: `output_dir` defaults
  to `runs/<recipe>/<run_name>` and `run_name` to the config's name (`default` without a config). A time stamp
  would be unique but would send a restarted run to a fresh directory, where it finds no checkpoint.

Precedence: dataclass default < YAML value < command-line flag.

    run_args, pin_args, training_args = parse_recipe_args((RunArguments, PinArguments, TrainingArguments))
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from trl import TrlParser

RECIPES_DIR = Path(__file__).resolve().parent.parent
"""The folder of the installed `groundvlm.recipes` package; shipped configs live in `RECIPES_DIR/<recipe>/`."""

DEFAULT_RUN_NAME = "default"
"""`run_name` when neither the command line, the YAML nor a config name gives one."""

logger = logging.getLogger("groundvlm")


# Exit status of a run that stopped at its --max_train_minutes budget (checkpoint saved; run it again to resume).
EXIT_PAUSED = 3


class RecipeError(ValueError):
    """An error of the user's making (a bad argument, a missing path, a bad config): the recipe's entry point
    prints its message alone (`error: ...`) and exits with status 1, without a traceback."""


def check_arg(condition: bool, name: str, value: Any, expected: str) -> None:
    """Raise `RecipeError("--<name> must be <expected>, got <value>")` unless `condition`."""
    if not condition:
        raise RecipeError(f"--{name} must be {expected}, got {value!r}.")


def check_positive(args: Any, *names: str, allow_zero: bool = False, allow_none: bool = False) -> None:
    """Each named field of `args` is an int/float > 0 (>= 0 with `allow_zero`; or None with `allow_none`)."""
    for name in names:
        value = getattr(args, name)
        if value is None and allow_none:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value >= 0 if allow_zero else value > 0)
        check_arg(ok, name, value, "a number >= 0" if allow_zero else "a number > 0")


def check_fraction(args: Any, *names: str) -> None:
    """Each named field of `args` is a number in [0, 1]."""
    for name in names:
        value = getattr(args, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        check_arg(ok, name, value, "a number in [0, 1]")


def flag_value(argv: list[str], flag: str, default: str | None = None) -> str | None:
    """The value of `flag` in a raw argument list (`--flag value` or `--flag=value`; the last one wins, as argparse
    reads it), else `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without every occurrence of `flag` and its value."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def run_recipe(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> Any:
    """Call a recipe's `main(argv)`; a `RecipeError` (or a config that is not found) ends the process with
    `error: <message>` on stderr and status 1, also logged to the run's `train.log` when one is attached; any other
    exception is logged there with its traceback and raised.

    Under `accelerate launch` the launcher then raises its own `CalledProcessError` after the child's message
    (`accelerate launch --quiet` leaves only the message).
    """
    from groundvlm.recipes.common.checkpointing import TrainingPaused

    try:
        return main(argv)
    except TrainingPaused as paused:
        logger.warning("%s", paused)
        print(f"paused: {paused}", file=sys.stderr)
        sys.exit(EXIT_PAUSED)
    except (RecipeError, FileNotFoundError) as error:
        if logger.handlers:  # train.log is attached: record the message with its traceback there
            logger.error("%s", error, exc_info=True)
        sys.exit(f"error: {error}")
    except Exception:
        if logger.handlers:  # a crash: its traceback goes to train.log too, then up as usual
            logger.exception("The recipe failed")
        raise
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Tear down the torch.distributed process group a multi-process launch opened, on every rank: left to the
    interpreter's exit, gloo's threads can abort a rank ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class RunArguments:
    """Arguments every recipe shares that `transformers.TrainingArguments` does not already have.

    `seed`, `run_name`, `output_dir` and `report_to` are deliberately *not* here: `TrainingArguments` (and trl's
    configs, which subclass it) own them, and two dataclasses declaring the same field make the parser fail.
    `parse_recipe_args` gives those fields their recipe defaults instead.
    """

    preset: Literal["cpu", "gpu", "gpu-small"] = field(
        default="cpu",
        metadata={
            "help": "Size preset: 'cpu' keeps models and data small enough for 2 CPU cores; 'gpu' scales them "
            "up for an accelerator; 'gpu-small' trains the cpu sizes with the GPU budget (toy assets small enough "
            "to commit and to run on a CPU). Each recipe documents what the preset changes."
        },
    )
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Time budget of this launch's training: past it the run saves a checkpoint at the next step, "
            "skips its final save and evaluation and exits with status 3; the same command resumes it (for machines "
            "lent for minutes at a time)."
        },
    )
    resume: bool = field(
        default=True,
        metadata={
            "help": "Resume from the last complete checkpoint in output_dir if there is one (use --no_resume to "
            "start over). An explicit --resume_from_checkpoint <path> takes precedence."
        },
    )


class ConfigNotFoundError(RecipeError, FileNotFoundError):
    """`--config` names neither a file nor a shipped config."""


def resolve_config_path(recipe: str | None, name: str | Path) -> Path:
    """Find a recipe config: an existing file path, else `recipes/<recipe>/<name>[.yaml]` in the installed package.

    Args:
        recipe: the recipe's name (`"pin"`, `"vpgtrans"`, `"groma"`); may be `None` when `name` is a path.
        name: a path to a YAML file, or a config name such as `"stage1"` or `"stage1.yaml"`.

    Returns:
        The path of an existing YAML file.

    Raises:
        ConfigNotFoundError (a `RecipeError` and a `FileNotFoundError`): naming what was looked for and listing the configs the recipe ships.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if recipe is None:
        raise RecipeError(f"Config file {str(name)!r} does not exist (and no recipe was given to look it up in).")
    recipe_dir = RECIPES_DIR / recipe
    file_name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    candidate = recipe_dir / file_name
    # Only bare names are looked up in the package; "some/dir/x.yaml" that does not exist is a user typo.
    if len(path.parts) == 1 and candidate.is_file():
        return candidate
    shipped = sorted(p.stem for p in recipe_dir.glob("*.yaml")) if recipe_dir.is_dir() else []
    raise ConfigNotFoundError(
        f"Config {str(name)!r} is neither an existing file nor a config of recipe {recipe!r} "
        f"(looked for {candidate}). Configs shipped with {recipe!r}: {shipped or 'none'}."
    )


def _config_from_argv(args: list[str]) -> tuple[list[str], str | None]:
    """Split `--config X` / `--config=X` out of `args`; returns (args without it, X or None)."""
    rest, config = [], None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config":
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise RecipeError("--config needs a value: a YAML path or the name of a recipe config.")
            if config is not None:
                raise RecipeError("--config was given more than once.")
            config = args[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            if config is not None:
                raise RecipeError("--config was given more than once.")
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return rest, config


def _load_config(path: Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Read a recipe YAML and check that every key is a field of one of `dataclass_types` (or trl's `env`)."""
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RecipeError(
            f"Config file {path} must hold a YAML mapping of argument names to values, got {type(config).__name__}."
        )
    known = {f.name for dtype in dataclass_types for f in dataclasses.fields(dtype) if f.init}
    unknown = [key for key in config if key not in known and key != "env"]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        names = ", ".join(dtype.__name__ for dtype in dataclass_types)
        raise RecipeError(
            f"Config file {path}: unknown key(s) {', '.join(hints)}; valid keys are the fields of {names}."
        )
    return config


def _add_config_help(parser: argparse.ArgumentParser, recipe: str | None) -> None:
    """Document `--config` (which `TrlParser` reads before argparse sees the arguments) in `parser`'s help."""
    shipped = sorted(p.stem for p in (RECIPES_DIR / (recipe or "")).glob("*.yaml")) if recipe else []
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="A YAML file of argument values, or the name of a config shipped with the recipe"
        + (f" ({', '.join(shipped)})" if shipped else "")
        + ". Command-line flags override it.",
    )


_RUN_LEVEL_FIELDS = {"output_dir", "run_name", "seed", "report_to"}
"""`TrainingArguments` fields every recipe's short `--help` lists (the run-level defaults of `parse_recipe_args`)."""


def _own_fields(dtype: type) -> set[str]:
    """The fields a recipe adds: all of a plain dataclass's; for a `TrainingArguments` subclass, those it declares
    or re-defaults itself (not the hundreds it inherits)."""
    from transformers import TrainingArguments

    if issubclass(dtype, TrainingArguments):
        return set(dtype.__dict__.get("__annotations__", {})) | _RUN_LEVEL_FIELDS
    return {f.name for f in dataclasses.fields(dtype) if f.init}


def short_help_parser(
    parser: argparse.ArgumentParser, dataclass_types: Sequence[type], recipe: str | None
) -> argparse.ArgumentParser:
    """A parser whose help lists `--config` and the recipe's own options only (see `_own_fields`), one group per
    dataclass; `--help-all` lists every option."""
    short = argparse.ArgumentParser(
        prog=parser.prog,
        usage="%(prog)s [--config YAML] [--option value ...]",
        add_help=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Run with --help-all for every option, including all of transformers' TrainingArguments.",
    )
    short.add_argument("-h", "--help", action="store_true", help="Show this message and exit.")
    short.add_argument("--help-all", action="store_true", help="Show every option and exit.")
    _add_config_help(short, recipe)
    for dtype in dataclass_types:
        own = _own_fields(dtype)
        group = short.add_argument_group(dtype.__name__)
        for action in parser._actions:
            if action.dest in own and action.option_strings:
                group._add_action(action)
    return short


def parse_recipe_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    recipe: str | None = None,
) -> tuple:
    """Parse `--config <yaml>` plus command-line overrides into one instance of each dataclass.

    Args:
        dataclass_types: the argument dataclasses, e.g. `(RunArguments, PinArguments, TrainingArguments)`.
        argv: the arguments without the program name; `None` reads `sys.argv[1:]`.
        recipe: the recipe's name, used to look up config names and for the default `output_dir`; `None` takes
            the stem of the running script (`recipes/pin.py` -> `"pin"`).

    Returns:
        A tuple with one instance per entry of `dataclass_types`, in the same order.

    Run-level defaults, each only where some dataclass has the field and neither the YAML nor the command line
    sets it: `run_name` = the config's name (its file stem), else `"default"`; `report_to` = `"none"` (no
    tracker unless asked for); `output_dir` = `runs/<recipe>/<run_name>` (relative to the working directory)
    when it is still `None` after YAML and command line — the same arguments give the same directory, so a
    relaunch finds the run's checkpoints.
    """
    dataclass_types = tuple(dataclass_types)
    if not dataclass_types or not all(dataclasses.is_dataclass(d) and isinstance(d, type) for d in dataclass_types):
        raise TypeError(f"dataclass_types must be a non-empty sequence of dataclass types, got {dataclass_types!r}.")
    if recipe is None:
        recipe = Path(sys.argv[0]).stem or "recipe"
    args, config_name = _config_from_argv(list(sys.argv[1:] if argv is None else argv))

    parser = TrlParser(dataclass_types)
    if "--help-all" in args:
        _add_config_help(parser, recipe)
        parser.print_help()
        sys.exit(0)
    if "-h" in args or "--help" in args:
        short_help_parser(parser, dataclass_types, recipe).print_help()
        sys.exit(0)
    dests = {action.dest for action in parser._actions}
    config_path, config = None, {}
    if config_name is not None:
        config_path = resolve_config_path(recipe, config_name)
        config = _load_config(config_path, dataclass_types)  # fails on unknown keys before trl sees them

    run_name = config_path.stem if config_path is not None else DEFAULT_RUN_NAME
    run_defaults = {"run_name": run_name, "report_to": "none"}
    parser.set_defaults(**{key: value for key, value in run_defaults.items() if key in dests})
    if "output_dir" in dests:
        # A first look at the effective values (YAML, then command line) decides whether output_dir was given
        # and which run_name names it; trl's parse below applies the same YAML again, so the values agree.
        parser.set_defaults_with_config(**{key: value for key, value in config.items() if key != "env"})
        namespace, _ = parser.parse_known_args(args=args)
        if namespace.output_dir is None:
            effective_run_name = getattr(namespace, "run_name", None) or run_name
            parser.set_defaults(output_dir=str(Path("runs") / recipe / effective_run_name))
    if config_path is not None:
        args = ["--config", str(config_path), *args]
    parsed = tuple(parser.parse_args_and_config(args=args))
    for values in parsed:
        if isinstance(values, RunArguments):
            check_positive(values, "max_train_minutes", allow_none=True)
    return parsed
