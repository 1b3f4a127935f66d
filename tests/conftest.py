"""Test configuration: offline, with a throw-away HF home, set before any Hugging Face import.

`huggingface_hub` reads HF_HUB_OFFLINE once at import time, so these must be set here, at the very top
of the first file pytest imports.
"""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="groundvlm-test-hf-home-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # the demo tests: no usage reporting or version check
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_MODULES_CACHE"] = os.path.join(_HF_HOME, "modules")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GROUNDVLM_CACHE", os.path.join(_HF_HOME, "groundvlm-cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so tests are deterministic in any order."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
