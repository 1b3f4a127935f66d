"""README.md stays true: its "Using the models" code runs on tiny models, and every command line of "Quickstart",
"Using the models" and "Recipes" parses against the real entry points.

Everything is read from README.md itself (fenced blocks, inline code spans), so editing the README or an entry point
without the other fails here. Commands are parsed, never run: each entry point is stopped right after it has parsed
and checked its arguments (recipes: at `prepare_run_dir`, the first thing that writes; the captioner: at
`build_caption_vlm`; plain argparse scripts: after `parse_args`). Placeholders are filled in: `<...>` becomes `X`,
optional `[...]` parts are included (with `...` as `X`).
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib
import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from groundvlm.recipes.systems.vpgtrans.stages import MODEL_DIR

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTIONS = ("Quickstart", "Using the models", "Recipes")
RECIPES = ("pin", "vpgtrans", "groma")  # recipe scripts recipes/<name>.py driven by parse_recipe_args


# ------------------------------------------------------------------------------------------- reading the README


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def fenced_blocks(text: str, language: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S) if m.group(1) == language]


def chunks(text: str) -> list[str]:
    """Paragraphs (split at blank lines outside fenced blocks); a fenced block belongs to its paragraph."""
    out, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not line.strip() and not fenced:
            if current:
                out.append("\n".join(current))
            current = []
        else:
            current.append(line)
    return out + (["\n".join(current)] if current else [])


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks (a span may wrap a line), whitespace collapsed."""
    prose = re.sub(r"^```\w*\n.*?^```", "", text, flags=re.M | re.S)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


@dataclass
class Command:
    text: str  # as written, placeholders included
    comment: str = ""  # the shell comment after it, if any

    @property
    def argv(self) -> list[str]:
        # optional parts are used, so their flags are checked too
        text = re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).replace("...", "X"), self.text)
        return shlex.split(re.sub(r"<[^<>]*>", "X", text))


def is_command(text: str) -> bool:
    return text.startswith(("python ", "accelerate launch "))


def commands_in(text: str) -> list[Command]:
    """Commands of the bash blocks (continuations joined, `&&` split, comments kept) and inline command spans."""
    found = []
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line, _, comment = line.partition(" #")
            for part in line.split("&&"):
                if is_command(part.strip()):
                    found.append(Command(" ".join(part.split()), comment.strip()))
    return found + [Command(span) for span in inline_spans(text) if is_command(span)]


def readme_commands() -> list[Command]:
    """Every command of the checked sections, in README order; Quickstart only for groundvlm's own modules."""
    found = []
    for title in SECTIONS:
        for command in commands_in(section(title)):
            if title != "Quickstart" or command.text.startswith("python -m groundvlm."):
                found.append(command)
    return found


# ------------------------------------------------------------------------------------------- parsing commands


class Stop(Exception):
    """Raised by a patched entry point once the arguments are parsed, so that nothing runs."""

    def __init__(self, value):
        super().__init__("stopped after parsing")
        self.value = value


@dataclass
class Parsed:
    target: str  # module name, or the script path for scripts outside the package
    kind: str  # "recipe" | "captioner" | "argparse"
    values: object = None  # recipe: (output_dir, run_args, recipe_args, training_args); captioner: the call's args
    reads: list[str] = field(default_factory=list)  # runs/... folders the command needs
    writes: list[str] = field(default_factory=list)  # runs/... folders the command produces


def _module_for(target: str):
    if target.endswith(".py"):
        path = ROOT / target
        assert path.is_file(), f"README names the script {target}, which does not exist"
        if target.startswith("recipes/"):  # recipes/ is the package groundvlm.recipes
            return importlib.import_module("groundvlm." + target[: -len(".py")].replace("/", "."))
        spec = importlib.util.spec_from_file_location(f"_readme_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def parse_command(argv: list[str], stop_after_parse: bool = False) -> Parsed:
    """Parse a README command line with the real entry point; raises whatever the entry point raises on bad input.

    argparse's prefix matching is off, so a README flag must be spelled as the code spells it (`--out` would
    otherwise pass for `--output_dir`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "_get_option_tuples", lambda self, option_string: [])
        return _parse_command(argv, stop_after_parse)


def _parse_command(argv: list[str], stop_after_parse: bool) -> Parsed:
    if argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(argv[2:])
        if launch.config_file:
            assert (ROOT / launch.config_file).is_file(), f"accelerate config {launch.config_file} does not exist"
        target, args = launch.training_script, list(launch.training_script_args)
    elif argv[:2] == ["python", "-m"]:
        target, args = argv[2], argv[3:]
    elif argv[0] == "python":
        target, args = argv[1], argv[2:]
    else:
        raise AssertionError(f"not a python/accelerate command: {argv}")
    module = _module_for(target)
    name = module.__name__.removeprefix("groundvlm.recipes.")

    with pytest.MonkeyPatch.context() as patch:
        if name in RECIPES:
            # TrainingArguments refuses bf16 on a machine without a GPU unless use_cpu, and tf32 (paper configs) without
            # an Ampere GPU; neither changes anything else here.
            args = [*args, "--use_cpu", "--tf32", "false"]
            if stop_after_parse:
                real = module.parse_recipe_args

                def parse_and_stop(*a, **k):
                    raise Stop((None, *real(*a, **k)))

                patch.setattr(module, "parse_recipe_args", parse_and_stop)

            def stop_at_run_dir(output_dir, *parsed):
                raise Stop((output_dir, *parsed))

            # The entry script takes the run dir itself, or through its system's function entry (VPGTrans:
            # systems.vpgtrans.stages.run_vpgtrans).
            from groundvlm.recipes.systems.vpgtrans import stages as vpgtrans_stages

            for owner in (module, vpgtrans_stages):
                if hasattr(owner, "prepare_run_dir"):
                    patch.setattr(owner, "prepare_run_dir", stop_at_run_dir)
            kind = "recipe"
        elif name == "systems.vpgtrans.captioner":

            def stop_at_build(*a, **k):
                raise Stop((a, k))

            def stop_at_check(*a, **k):
                raise Stop(("check", a, k))

            patch.setattr(module, "build_caption_vlm", stop_at_build)
            patch.setattr(module, "check_base", stop_at_check)  # `--check MODEL_DIR`: gates a saved model, trains none
            kind = "captioner"
        else:
            real_parse = argparse.ArgumentParser.parse_args

            def parse_args_and_stop(self, *a, **k):
                raise Stop(real_parse(self, *a, **k))

            patch.setattr(argparse.ArgumentParser, "parse_args", parse_args_and_stop)
            kind = "argparse"
        try:
            module.main(args)
        except Stop as stop:
            return _describe(Parsed(target, kind, stop.value), module, name)
    raise AssertionError(f"{argv}: the entry point returned without reaching argument parsing's end")


def _describe(parsed: Parsed, module, name: str) -> Parsed:
    if parsed.kind == "recipe":
        output_dir, _, *recipe_args, _ = parsed.values
        recipe_args = {k: v for args in recipe_args for k, v in vars(args).items()}
        if output_dir is not None:
            parsed.writes.append(str(output_dir))
        if name == "vpgtrans":
            if output_dir is not None:
                parsed.writes.append(f"{output_dir}/{MODEL_DIR}")
            inputs = (recipe_args["init_model"], recipe_args["source_model"])
            parsed.reads += [p for p in inputs if p and p.startswith("runs/")]
        if name == "pin":
            if output_dir is not None:
                parsed.writes.append(f"{output_dir}/pin/final")  # pin.main saves the trained PIN + processor there
            if (recipe_args["base_model"] or "").startswith("runs/"):
                parsed.reads.append(recipe_args["base_model"])
    elif parsed.kind == "captioner" and parsed.values[0] == "check":
        _, (model_dir, *_), _ = parsed.values
        if str(model_dir).startswith("runs/"):
            parsed.reads.append(str(model_dir))
    elif parsed.kind == "captioner":
        (out, *rest), kwargs = parsed.values
        extra = rest[3] if len(rest) > 3 else kwargs.get("extra_args")
        # extra flags go on to recipes/vpgtrans.py unchecked here, so README commands must not rely on them
        assert not extra, f"captioner command passes flags it does not parse itself: {extra}"
        parsed.writes += [str(out), f"{out}/model"]
    return parsed


@pytest.fixture(scope="module")
def parsed_commands() -> list[tuple[Command, Parsed]]:
    commands = readme_commands()
    assert len(commands) >= 15, f"expected the README's ~17 commands, found {[c.text for c in commands]}"
    return [(c, parse_command(c.argv)) for c in commands]


# ------------------------------------------------------------------------------------------- command tests


def test_every_command_parses(parsed_commands):
    kinds = {p.target for _, p in parsed_commands}
    # the README documents every entry point the project has
    for target in (
        "recipes/pin.py",
        "recipes/vpgtrans.py",
        "recipes/groma.py",
        "groundvlm.recipes.systems.vpgtrans.captioner",
        "groundvlm.recipes.convert.groma",
        "groundvlm.recipes.convert.lavis_blip2",
        "groundvlm.recipes.push.push_to_hub",
        "groundvlm.recipes.toyworld",
        "benchmarks/vpgtrans_transfer.py",
    ):
        assert target in kinds, f"README has no command for {target}"


def test_parsing_rejects_what_the_code_does_not_take():
    """The harness itself: a flag that no entry point has must fail to parse (else every test above is vacuous)."""
    for argv in (
        ["accelerate", "launch", "recipes/pin.py", "--output", "x"],
        ["accelerate", "launch", "recipes/vpgtrans.py", "--stage", "stage1", "--config", "no_such_config"],
        ["python", "-m", "groundvlm.recipes.convert.groma", "--src", "a", "--out", "b"],
        ["python", "-m", "groundvlm.recipes.systems.vpgtrans.captioner", "--init_model", "x"],
    ):
        with pytest.raises((SystemExit, ValueError, FileNotFoundError, AssertionError)):
            parse_command(argv)


def test_config_names_resolve(parsed_commands):
    from groundvlm.recipes.common.arguments import RECIPES_DIR, resolve_config_path

    checked = 0
    for command, parsed in parsed_commands:
        argv = command.argv
        if parsed.kind != "recipe" or "--config" not in argv:
            continue
        recipe = Path(parsed.target).stem
        name = argv[argv.index("--config") + 1]
        path = resolve_config_path(recipe, name)
        assert path.parent == RECIPES_DIR / recipe and path.stem == name
        assert parsed.values[-1].run_name == name  # the run directory is named after the config
        checked += 1
    assert checked >= 5


def test_config_globs_and_paths_in_prose_exist():
    """`paper_..._*` config names match shipped configs that parse; `recipes/...`, `hub_cards/...` paths exist."""
    from groundvlm.recipes.common.arguments import RECIPES_DIR

    text = section("Using the models") + section("Recipes")
    spans = inline_spans(text)
    comments = [c.comment for c in commands_in(text)]
    globs = [s for s in spans if re.fullmatch(r"[\w.]+_\*", s)]
    assert len(globs) >= 3
    for pattern in globs:
        matches = [Path(p) for r in RECIPES for p in glob.glob(str(RECIPES_DIR / r / f"{pattern}.yaml"))]
        assert matches, f"no shipped config matches {pattern}"
        for path in matches:
            recipe = path.parent.name
            parsed = parse_command(["accelerate", "launch", f"recipes/{recipe}.py", "--config", path.stem])
            assert parsed.values[-1].run_name == path.stem
    paths = [p for s in spans + comments for p in re.findall(r"(?:recipes|hub_cards|benchmarks)/[^\s`()]*", s)]
    assert len(paths) >= 6
    for path in paths:
        path = re.sub(r"<[^<>]*>", "*", path)
        braces = re.search(r"\{([^{}]*)\}", path)
        for variant in [path.replace(braces.group(0), v) for v in braces.group(1).split(",")] if braces else [path]:
            assert glob.glob(str(ROOT / variant)), f"README names {variant}, which does not exist"


def test_flag_fragments_are_accepted(parsed_commands):
    """Inline `--flag ...` spans are accepted by a command of their paragraph (`--no_resume`, `--dtype bfloat16`)."""
    checked = 0
    for title in SECTIONS[1:]:
        for chunk in chunks(section(title)):
            fragments = [s for s in inline_spans(chunk) if s.startswith("--") and "<" not in s]
            commands = commands_in(chunk)
            for fragment in fragments:
                assert commands, f"README fragment `{fragment}` has no command in its paragraph"
                errors = []
                for command in commands:
                    try:
                        parse_command(command.argv + shlex.split(fragment), stop_after_parse=True)
                        break
                    except (SystemExit, ValueError, FileNotFoundError, AssertionError) as err:
                        errors.append(f"{command.text}: {err!r}")
                else:
                    raise AssertionError(f"no command of its paragraph accepts `{fragment}`:\n" + "\n".join(errors))
                checked += 1
    assert checked >= 6


def test_pin_methods_and_gpu_preset_match_the_code(parsed_commands):
    from groundvlm.recipes.systems.pin.baselines import METHODS

    (listed,) = [s for s in inline_spans(section("Recipes")) if s.startswith("--methods ")]
    _, _, pin_args, _ = parse_command(["accelerate", "launch", "recipes/pin.py", *shlex.split(listed)]).values
    assert sorted(pin_args.methods) == sorted(METHODS)  # "the Table-1 baselines": all of them
    resume = parse_command(["accelerate", "launch", "recipes/pin.py", "--no_resume"]).values[1].resume
    assert resume is False
    for command, parsed in parsed_commands:
        named = re.search(r"recipes/\w+/(\w+)\.yaml", command.comment)
        if named:  # "... (recipes/pin/toy_gpu.yaml)": that config is what the command runs
            assert parsed.values[-1].run_name == named.group(1), command.text
        if "every baseline" in command.comment:
            assert sorted(parsed.values[2].methods) == sorted(METHODS), command.text


def test_run_folders_chain(parsed_commands):
    """Each runs/... folder a command reads is written by an earlier README command, and every concrete runs/...
    path the sections mention is one a README command writes."""
    written: set[str] = set()
    for command, parsed in parsed_commands:
        for path in parsed.reads:
            assert path in written, f"`{command.text}` reads {path}, which no earlier README command writes"
        written.update(parsed.writes)
    text = section("Using the models") + section("Recipes")
    mentioned = {m.rstrip("/.") for m in re.findall(r"runs/[\w.-]+(?:/[\w.-]+)*/?", text)}
    assert len(mentioned) >= 4
    assert mentioned <= written, f"README mentions runs/ paths no command writes: {sorted(mentioned - written)}"


def test_pin_default_base_asset_is_buildable(parsed_commands, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from groundvlm.recipes import toyworld
    from groundvlm.recipes.systems.pin.models import DEFAULT_BASE_ASSET

    (command,) = [c for c, _ in parsed_commands if "toy asset" in c.comment]
    (asset,) = re.findall(r'toy asset "([\w-]+)"', command.comment)
    assert DEFAULT_BASE_ASSET == asset
    assert asset in toyworld.ARTEFACTS
    # The cpu preset copies the committed GPU-built checkpoint (no training on the CPU), which loads as a VL-LLM.
    folder = toyworld.toy_asset(asset, "cpu", cache_dir=tmp_path, verbose=False)
    assert toyworld.read_build_info(folder)["metrics"]["source"] == "committed"
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert type(model).__name__ == "VPGTransModel" and type(processor).__name__ == "VPGTransProcessor"


# ------------------------------------------------------------------------------------------- the Python snippets


def _substitute(code: str, paths: dict[str, Path]) -> str:
    """Point the README's placeholder paths at tmp folders and run on the CPU (dtypes are kept)."""
    for placeholder in set(re.findall(r'"(path/to/[^"]+)"', code)):
        assert placeholder in paths, f"README snippet uses {placeholder!r}, which this test does not provide"
        code = code.replace(f'"{placeholder}"', repr(str(paths[placeholder])))
    return code.replace(".cuda()", "").replace('.to("cuda")', '.to("cpu")')


def _run_snippet(code: str, namespace: dict) -> dict:
    """exec `code`, keeping each bare top-level expression's value as `namespace["_expr"][source line]`."""
    tree = ast.parse(code)
    values = namespace.setdefault("_expr", {})
    for node in tree.body:
        piece = ast.Module(body=[node], type_ignores=[])
        if isinstance(node, ast.Expr):
            expression = compile(ast.Expression(node.value), "README.md", "eval")
            values[ast.get_source_segment(code, node)] = eval(expression, namespace)
        else:
            exec(compile(piece, "README.md", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Saved tiny stand-ins for the README's folders: Groma (model + processor), a BLIP-2 base, a PIN over it."""
    from transformers import Blip2Processor

    from groundvlm.modeling import GromaForConditionalGeneration, PinForLocalization
    from groundvlm.processing import PinProcessor
    from tests._groma_tiny import groma_tokenizer, tiny_groma_config, tiny_groma_processor
    from tests._pin_tiny import blip_image_processor, make_tokenizer, tiny_blip2

    tmp = tmp_path_factory.mktemp("readme")
    tokenizer = groma_tokenizer()
    config = tiny_groma_config(tokenizer)
    torch.manual_seed(0)
    GromaForConditionalGeneration(config).eval().save_pretrained(tmp / "groma")
    tiny_groma_processor(tokenizer, config).save_pretrained(tmp / "groma")
    tokenizer.save_pretrained(tmp / "groma-release")  # a release's tokenizer files, Groma's tokens included

    pin_tokenizer = make_tokenizer("opt")
    blip2_processor = Blip2Processor(
        image_processor=blip_image_processor(), tokenizer=pin_tokenizer, num_query_tokens=4
    )
    blip2 = tiny_blip2(pin_tokenizer)
    blip2.save_pretrained(tmp / "blip2")
    blip2_processor.save_pretrained(tmp / "blip2")
    pin = PinForLocalization.from_base(blip2, base_model_name_or_path=str(tmp / "blip2"))
    pin.save_pretrained(tmp / "pin")
    PinProcessor.from_base_processor(blip2_processor).save_pretrained(tmp / "pin")
    return {"tmp": tmp, "blip2_state": {k: v.clone() for k, v in blip2.state_dict().items()}}


def test_usage_snippet_runs(tiny_checkpoints):
    from tests._groma_tiny import random_image

    tmp = tiny_checkpoints["tmp"]
    (code, *_) = fenced_blocks(section("Using the models"), "python")
    paths = {"path/to/groma": tmp / "groma", "path/to/pin": tmp / "pin", "path/to/blip2-opt-2.7b": tmp / "blip2"}
    height, width = 90, 160
    ns = _run_snippet(_substitute(code, paths), {"image": random_image(height, width, seed=3)})

    # Groma: the prompt is Groma's, the model runs in the README's dtype, results are per image with pixel boxes
    assert isinstance(ns["prompt"], str) and "USER: [grounding]Describe the image briefly. ASSISTANT:" in ns["prompt"]
    assert ns["model"].dtype == torch.bfloat16
    assert ns["inputs"]["image_sizes"].tolist() == [[height, width]]
    assert ns["out"].sequences.shape[0] == 1 and len(ns["out"].region_boxes) == 1
    result = ns["result"]
    assert {"text", "phrases", "boxes", "parsed"} <= set(result)
    phrases = ns["_expr"]['result["phrases"]']
    assert isinstance(phrases, list)
    for phrase, boxes in phrases:
        assert isinstance(phrase, str) and boxes.ndim == 2 and boxes.shape[1] == 4
    assert result["boxes"].ndim == 2 and result["boxes"].shape[1] == 4
    region_px = ns["out"].region_boxes[0].float() * torch.tensor([width, height, width, height])
    for row in result["boxes"]:  # REC-style boxes are the model's regions scaled to the caller's image
        assert any(torch.allclose(row, r, atol=1e-2) for r in region_px)

    # PIN: one dict per image, a (1, 4) pixel box tensor inside the original image, the object name back
    (localised,) = [v for k, v in ns["_expr"].items() if "post_process_localization" in k]
    assert len(localised) == 1 and {"boxes", "labels", "parsed"} <= set(localised[0])
    box = localised[0]["boxes"]
    assert isinstance(box, torch.Tensor) and box.shape == (1, 4)
    assert 0 <= box[0, 0] <= box[0, 2] <= width and 0 <= box[0, 1] <= box[0, 3] <= height
    assert localised[0]["labels"] == ["cat"] and isinstance(localised[0]["parsed"], bool)
    assert type(ns["pin"].vlm).__name__ == "Blip2ForConditionalGeneration"

    # VPGTrans: the BLIP-2 folder loads "as is": every saved tensor, unchanged
    from groundvlm.modeling import VPGTransModel

    assert type(ns["vl"]) is VPGTransModel
    loaded, saved = ns["vl"].state_dict(), tiny_checkpoints["blip2_state"]
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)


def test_usage_snippet_referring_comment(tiny_checkpoints):
    """The snippet's comment: a referring prompt `... <refer> ...` with `refer_boxes=[[[x1,y1,x2,y2]]]` runs through
    the same bf16 model, and the region the prompt refers to is the caller's box."""
    from transformers import AutoModel, AutoProcessor

    from tests._groma_tiny import random_image

    (code, *_) = fenced_blocks(section("Using the models"), "python")
    assert "refer_boxes=[[[x1,y1,x2,y2]]]" in code and '"... <refer> ..."' in code
    folder = tiny_checkpoints["tmp"] / "groma"
    model = AutoModel.from_pretrained(folder, dtype="bfloat16").eval()
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": "What is <refer>?"}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    box = [20.0, 10.0, 100.0, 70.0]
    inputs = processor(images=random_image(90, 160, seed=4), text=prompt, refer_boxes=[[box]]).to("cpu")
    out = model.generate(**inputs, max_new_tokens=2, return_dict_in_generate=True)
    prompt_ids = inputs["input_ids"][0]
    resolved = out.sequences[0, : len(prompt_ids)][prompt_ids == model.config.refer_box_token_id]
    slot = resolved - model.config.proxy_token_start_id  # <refer_box> became the proxy token of the user's region
    referred = out.region_boxes[0][slot].float() * torch.tensor([160, 90, 160, 90])
    torch.testing.assert_close(referred, torch.tensor([box]), atol=0.5, rtol=0)  # bf16 boxes: half-pixel tolerance


def test_groma_processor_snippet(tiny_checkpoints):
    """The converter-side snippet builds a processor that loads with AutoProcessor next to a Groma config and has the
    released model's layout (448 px, 256 image slots, 100 regions = GromaConfig's defaults)."""
    from transformers import AutoProcessor

    from groundvlm.modeling import GromaConfig
    from groundvlm.processing import GromaProcessor

    tmp = tiny_checkpoints["tmp"]
    (_, code) = fenced_blocks(section("Using the models"), "python")
    converted = tmp / "converted"
    GromaConfig.from_pretrained(tmp / "groma").save_pretrained(converted)  # what the converter writes besides weights
    paths = {"path/to/groma-7b-finetune": tmp / "groma-release", "path/to/groma": converted}
    ns = _run_snippet(_substitute(code, paths), {})
    processor = AutoProcessor.from_pretrained(converted)
    assert type(processor) is GromaProcessor
    released = GromaConfig()
    assert processor.num_image_tokens == released.num_image_tokens == 256
    assert processor.num_proxy_tokens == released.num_proxy_tokens == 100
    assert processor.image_processor.size["height"] == processor.image_processor.size["width"] == 448
    assert processor.tokenizer.get_vocab() == ns["tokenizer"].get_vocab()
