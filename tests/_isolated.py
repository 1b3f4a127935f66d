"""Run Python code in a fresh process where `groundvlm` is NOT importable.

This is what a Hub user has: transformers, torch and torchvision, and a folder saved by `save_pretrained`
whose remote code must be self-contained. The editable install puts a meta-path finder for `groundvlm`
into every interpreter, so the prelude removes it (and any path into this repo) before running the code.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PRELUDE = f"""
import importlib.util, sys
def _is_editable(obj):
    names = (getattr(obj, "__module__", "") or "", type(obj).__module__, type(obj).__name__)
    return any("editable" in n.lower() for n in names)
sys.meta_path[:] = [f for f in sys.meta_path if not _is_editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _is_editable(h)]
sys.path[:] = [p for p in sys.path if p and "__editable__" not in p and not p.startswith({str(REPO)!r})]
sys.path_importer_cache.clear()
for name in list(sys.modules):
    if name.startswith("groundvlm") or name.startswith("__editable__"):
        del sys.modules[name]
assert importlib.util.find_spec("groundvlm") is None, "groundvlm must not be importable here"
"""


def run_isolated(code: str, cwd, timeout: int = 300) -> str:
    """Run `code` in a clean interpreter (cwd=`cwd`, offline HF env inherited); return stdout.

    Raises AssertionError with the subprocess's stderr if it fails.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONNOUSERSITE"] = "1"
    script = _PRELUDE + "\n" + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"isolated process failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
