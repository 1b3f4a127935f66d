"""Decoding without a per-token host sync: transformers' deferred stop check, turned on for CUDA inside Groma's
`generate`.

transformers' decoding loop asks after every token whether all sequences have finished
(`StopCheck`: `bool(unfinished_sequences.max() == 0)`), which blocks the host until the GPU has finished that step; the
host then prepares the next step's inputs (the 4-D attention mask, cache positions, ...) while the GPU waits. Its
`DeferredStopCheck` copies that flag asynchronously and reads it one step later, so the host queues step t+1 while
the GPU runs step t; it runs one extra forward after the last token, whose cache entries it crops and whose token it
drops (`finish`), so the returned tokens are the same. transformers enables it only on MPS
(`DeferredStopCheck.is_supported`); `with deferred_stop_check():` widens that to CUDA for the block.

The switch is a class attribute of transformers, so it is reference-counted: concurrent or nested `generate` calls
restore transformers' own rule when the last one ends. A `generate` of another model that overlaps in time (another
thread) defers too, which changes its timing, not its tokens. Where transformers has no `DeferredStopCheck` (it
appeared in 5.x), the block does nothing.
"""

import contextlib
import threading

import torch

_LOCK = threading.Lock()
_STATE = {"users": 0, "original": None}
DEVICE_TYPES = ("cuda",)


def _deferred_check_class():
    from transformers.generation import utils

    return getattr(utils, "DeferredStopCheck", None)


def deferral_available() -> bool:
    """Whether this transformers has a deferred stop check to turn on."""
    return _deferred_check_class() is not None


@contextlib.contextmanager
def deferred_stop_check():
    """Inside the block, `generate` on a CUDA device (or MPS, as transformers already does) defers its stop check by one step (see the module
    docstring); everything else keeps transformers' own rule (assisted decoding never defers, and a returned cache must
    be croppable)."""
    check = _deferred_check_class()
    if check is None:
        yield False
        return
    with _LOCK:
        if _STATE["users"] == 0:
            original = check.__dict__["is_supported"]
            _STATE["original"] = original

            def is_supported(device: torch.device, cache, cache_is_returned: bool, is_assistant: bool) -> bool:
                if device.type in DEVICE_TYPES and not is_assistant:
                    return cache is None or cache.is_croppable or not cache_is_returned
                return original.__func__(device, cache, cache_is_returned, is_assistant)

            check.is_supported = staticmethod(is_supported)
        _STATE["users"] += 1
    try:
        yield True
    finally:
        with _LOCK:
            _STATE["users"] -= 1
            if _STATE["users"] == 0:
                check.is_supported = _STATE["original"]
                _STATE["original"] = None
