"""Which commit produced a result: the one git lookup every recipe and benchmark uses.

A run records the commit of the checkout it ran from. `$GIT_COMMIT` names it where the checkout was copied
without its `.git` folder (e.g. onto a GPU machine); a package installed from a wheel has no commit.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (recipes/common/ -> the repository root)."""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def git_state(root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """`{"commit": sha, "dirty": bool}` of the checkout at `root` (default: this package's), or None outside git."""
    root = Path(root) if root is not None else REPO_ROOT
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None  # installed from a wheel, or git missing: no commit to report
    return {"commit": commit, "dirty": bool(status.strip())}


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    """`$GIT_COMMIT` when set, else the commit of the checkout at `root` (default: this package's), else None."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    state = git_state(root)
    return state["commit"] if state else None
