r"""Push a saved PIN / VPGTrans / Groma folder to the Hugging Face Hub with a model card.

    python -m groundvlm.recipes.push.push_to_hub --model_dir DIR --repo_id org/name [--private] \
        [--eval_results metrics.json] [--base_model org/base] [--datasets a b] [--eval_dataset name] [--dry_run]

Before anything is written or sent, the folder must be self-contained remote code (a user will load it with only
transformers, torch and torchvision, `trust_remote_code=True`):
- `config.json` has an `auto_map` with `AutoConfig` and `AutoModel`, and every file named by any `auto_map`
  (config, processor, image processor, tokenizer configs) is in the folder and defines the named class;
- every `*.py` imports only the standard library, torch, torchvision, transformers (and numpy, which transformers
  requires) at top level — anything else only inside `try:` / `if is_x_available():`, as transformers' own import
  check allows — and relative imports are flat `from .sibling import X` with the sibling present; never `groundvlm`;
- weights are safetensors only (no `.bin`/`.pt`/`.pth`/`.ckpt`/`.pkl` pickles, e.g. a Trainer's `training_args.bin`);
- a PIN saved adapter-style references its base by Hub id (a local path would not load for anyone else).
Then README.md is written from `groundvlm.recipes.push.cards.build_model_card`, and the folder is uploaded with
`HfApi().create_repo(exist_ok=True)` + `upload_folder`. `--dry_run` does all of that except the two Hub calls, and
prints what would be uploaded.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from groundvlm.recipes.push.cards import build_model_card, is_local_path, read_config, system_of

# numpy is a hard requirement of transformers (and torch), so every environment that can load the model has it.
ALLOWED_IMPORTS = frozenset({"torch", "torchvision", "transformers", "numpy", "__future__"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Files that may carry an `auto_map` (transformers looks for processor auto_maps in this order, then config.json).
AUTO_MAP_FILES = (
    "config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer_config.json",
)
REQUIRED_AUTO_CLASSES = ("AutoConfig", "AutoModel")
# Never uploaded: caches and hidden files (upload_folder also skips .git/ and .cache/huggingface/ itself).
IGNORE_PATTERNS = ["__pycache__/*", "*/__pycache__/*", "*.pyc", ".*", "*/.*"]


class NotSelfContainedError(ValueError):
    """The folder would not load from the Hub with only transformers/torch/torchvision; `problems` lists why."""

    def __init__(self, model_dir: Path, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{model_dir} is not a self-contained remote-code folder:\n{lines}")


# --------------------------------------------------------------------------------------------- python imports


def _guarded(node: ast.AST) -> bool:
    """Imports under this node are optional for transformers' `check_imports` (a `try:` or `if is_x_available():`)."""
    if isinstance(node, ast.Try):
        return True
    if isinstance(node, ast.If):
        for sub in ast.walk(node.test):
            if isinstance(sub, ast.Call):
                name = getattr(sub.func, "id", None) or getattr(sub.func, "attr", "")
                if name.startswith("is_") and name.endswith("_available"):
                    return True
    return False


def check_python_file(path: Path, folder: Path) -> list[str]:
    """Problems with `path`'s imports (relative to the folder for messages); [] when it is Hub-safe."""
    rel = path.relative_to(folder).as_posix()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        return [f"{rel}: cannot be parsed ({err.msg}, line {err.lineno})"]
    problems: list[str] = []

    def visit(node: ast.AST, guarded: bool):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            # transformers copies relative imports matched by `from .name import`, as flat sibling files only.
            where = f"{rel} line {node.lineno}"
            if node.level > 1 or node.module is None:
                dots = "." * node.level
                problems.append(
                    f"{where}: `from {dots}{node.module or ''} import ...` is not followed by transformers; use a flat "
                    "`from .sibling import X`"
                )
            elif "." in node.module:
                problems.append(
                    f"{where}: `from .{node.module} import ...` imports a sub-package; remote code must be flat "
                    "sibling files"
                )
            elif not (path.parent / f"{node.module}.py").is_file():
                problems.append(f"{where}: imports `.{node.module}` but {node.module}.py is not in the folder")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top == "groundvlm":
                    problems.append(
                        f"{rel} line {node.lineno}: imports `{name}` — the Hub copy cannot import the groundvlm "
                        "package; import from a sibling file (`from .x import Y`) instead"
                    )
                elif top not in ALLOWED_IMPORTS and top not in sys.stdlib_module_names and not guarded:
                    problems.append(
                        f"{rel} line {node.lineno}: imports `{name}`, which users loading with trust_remote_code may "
                        f"not have (allowed: {', '.join(sorted(ALLOWED_IMPORTS - {'__future__'}))} and the standard "
                        "library); guard it in try/except"
                    )
        for child in ast.iter_child_nodes(node):
            visit(child, guarded or _guarded(node))

    visit(tree, False)
    return problems


def _defines(path: Path, name: str) -> bool:
    """Whether the module at `path` defines `name` at top level (class, function or assignment)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return False  # reported by check_python_file
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
    return False


# ---------------------------------------------------------------------------------------------------- auto_map


def _auto_maps(data, trail: str = ""):
    """(where, auto_map dict) for every `auto_map` key in a JSON document (processors nest them)."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "auto_map" and isinstance(value, dict):
                yield trail or "auto_map", value
            else:
                yield from _auto_maps(value, f"{trail}.{key}" if trail else key)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _auto_maps(value, f"{trail}[{i}]")


def _class_references(value) -> list[str]:
    """The `module.Class` strings of one auto_map value (a string, a [slow, fast] list or a {backend: ref} dict)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, str)]
    return []


def check_auto_map_file(path: Path, folder: Path) -> list[str]:
    rel = path.relative_to(folder).as_posix()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return [f"{rel} is not valid JSON: {err}"]
    problems = []
    for where, auto_map in _auto_maps(data):
        for auto_class, value in auto_map.items():
            for ref in _class_references(value):
                label = f"{rel} {where}[{auto_class!r}] = {ref!r}"
                if "--" in ref:
                    problems.append(f"{label} takes its code from another repository; the folder must carry it")
                    continue
                if ref.count(".") != 1:
                    problems.append(f"{label} must be `module.Class` with a top-level module file")
                    continue
                module, cls = ref.split(".")
                code = path.parent / f"{module}.py"
                if not code.is_file():
                    problems.append(
                        f"{label} names {module}.py, which is not in the folder (save_pretrained copies code only "
                        "for classes registered with register_for_auto_class)"
                    )
                elif not _defines(code, cls):
                    problems.append(f"{label}: {module}.py defines no `{cls}`")
    return problems


# ------------------------------------------------------------------------------------------------- the checks


def _pin_base_problems(config: dict, folder: Path) -> list[str]:
    """A PIN folder must be able to find its base on any machine: a `base/` subfolder or a Hub id."""
    subfolder = config.get("base_subfolder")
    if subfolder:
        if not (folder / subfolder / "config.json").is_file():
            return [f"config.json sets base_subfolder={subfolder!r} but {subfolder}/config.json is not in the folder"]
        return []
    ref = config.get("base_model_name_or_path")
    if not ref:
        return [
            (
                "config.json of this PIN names no base model (base_model_name_or_path is empty): save it with "
                "include_base=True or with base_model_name_or_path set to the base's Hub id"
            )
        ]
    if is_local_path(ref):
        return [
            (
                f"config.json of this PIN references its base at the local path {ref!r}, which nobody else can load: "
                "push the base first and save PIN with base_model_name_or_path='<org>/<base>', or save with "
                "include_base=True"
            )
        ]
    return []


def check_self_contained(model_dir: str | Path) -> None:
    """Raise `NotSelfContainedError` listing every problem that would stop the folder loading from the Hub."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model_dir {folder} is not a folder")
    config = read_config(folder)
    problems: list[str] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        problems.append(
            "config.json has no auto_map: transformers cannot find the model code (save with the model's own "
            "save_pretrained, which registers it, or set config.auto_map before saving)"
        )
    else:
        missing = [c for c in REQUIRED_AUTO_CLASSES if c not in auto_map]
        if missing:
            problems.append(f"config.json auto_map has no {missing} entry (has {sorted(auto_map)})")
    for path in files:
        if path.name in AUTO_MAP_FILES:
            problems += check_auto_map_file(path, folder)
        elif path.suffix == ".py":
            problems += check_python_file(path, folder)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            problems.append(
                f"{path.relative_to(folder).as_posix()} is a pickle file; only safetensors weights may be pushed "
                "(delete it, or convert weights with safetensors)"
            )

    if not any(p.parent == folder and p.suffix == ".safetensors" for p in files):
        problems.append("no *.safetensors weights at the top of the folder")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        except json.JSONDecodeError as err:
            shards = []
            problems.append(f"model.safetensors.index.json is not valid JSON: {err}")
        problems += [
            f"model.safetensors.index.json names {s}, which is not in the folder"
            for s in shards
            if not (folder / s).is_file()
        ]
    if config.get("model_type") == "pin":
        problems += _pin_base_problems(config, folder)
    if problems:
        raise NotSelfContainedError(folder, problems)


def upload_plan(model_dir: str | Path) -> list[str]:
    """Relative paths of the files `upload_folder` will send (same filter as the upload)."""
    folder = Path(model_dir)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS))


def push_to_hub(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    eval_results: dict | str | Path | None = None,
    base_model: str | list[str] | None = None,
    datasets: str | list[str] | None = None,
    eval_dataset: str | None = None,
    license: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
):
    """Check `model_dir`, write its README.md model card, then create `repo_id` and upload the folder.

    Returns `upload_folder`'s `CommitInfo`, or with `dry_run` the list of files that would be uploaded (nothing is
    sent to the Hub; README.md is still written so it can be read).
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    folder = Path(model_dir)
    check_self_contained(folder)
    system = system_of(folder)
    card = build_model_card(
        system,
        folder,
        eval_results=eval_results,
        base_model=base_model,
        datasets=datasets,
        model_id=repo_id,
        eval_dataset=eval_dataset,
        license=license,
    )
    card.save(folder / "README.md")
    files = upload_plan(folder)
    if dry_run:
        total = sum((folder / f).stat().st_size for f in files)
        print(f"[dry run] would create model repo {repo_id} (private={private}, exist_ok=True)")
        print(f"[dry run] would upload {len(files)} files ({total / 1e6:.2f} MB) from {folder}:")
        for f in files:
            print(f"  {f}  ({(folder / f).stat().st_size} bytes)")
        print(f"[dry run] model card ({system}) written to {folder / 'README.md'}")
        return files
    api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        ignore_patterns=IGNORE_PATTERNS,
        commit_message=commit_message or f"Upload {system} model with groundvlm",
    )
    print(f"pushed {len(files)} files to https://huggingface.co/{repo_id}")
    return info


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="folder written by save_pretrained (model + processor)")
    parser.add_argument("--repo_id", required=True, help="target Hub repo, org/name")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--eval_results", default=None, help="metrics.json of an eval run (recipes' layout)")
    parser.add_argument(
        "--eval_dataset", default=None, help="dataset id for results that name none (default: the toy world)"
    )
    parser.add_argument("--base_model", nargs="+", default=None, help="Hub id(s) this model was made from")
    parser.add_argument("--datasets", nargs="+", default=None, help="training datasets (Hub ids or names)")
    parser.add_argument("--license", default=None, help="license id for the card metadata")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--dry_run", action="store_true", help="check and write README.md, but send nothing")
    args = parser.parse_args(argv)
    try:
        push_to_hub(
            args.model_dir,
            args.repo_id,
            private=args.private,
            eval_results=args.eval_results,
            base_model=args.base_model,
            datasets=args.datasets,
            eval_dataset=args.eval_dataset,
            license=args.license,
            commit_message=args.commit_message,
            dry_run=args.dry_run,
        )
    except (NotSelfContainedError, FileNotFoundError, ValueError, TypeError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
