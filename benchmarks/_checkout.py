"""Make `groundvlm` importable from a bare checkout (e.g. a GPU machine where the package is not installed).

pyproject.toml maps the product folders (modeling/, processing/, recipes/) into the `groundvlm` namespace; this
does the same mapping at run time when no installed `groundvlm` is found. Benchmarks import it first.
"""

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import groundvlm.modeling  # noqa: F401
except ImportError:
    _pkg = types.ModuleType("groundvlm")
    _pkg.__path__ = [str(ROOT)]
    sys.modules["groundvlm"] = _pkg
