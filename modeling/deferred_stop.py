"""Decoding without a per-token host sync: transformers' deferred stop check, turned on for CUDA inside the `generate`
of Groma, VPGTrans and PIN (each passes `defer_stop_check=False` through to opt out).

transformers' decoding loop asks after every token whether all sequences have finished
(`StopCheck`: `bool(unfinished_sequences.max() == 0)`), which blocks the host until the GPU has finished that step; the
host then prepares the next step's inputs (the 4-D attention mask, cache positions, ...) while the GPU waits. Its
`DeferredStopCheck` copies that flag asynchronously and reads it one step later, so the host queues step t+1 while
the GPU runs step t; after an early stop it has run one extra forward, whose cache entries it crops and whose token it
drops (`finish`), so the returned tokens and cache are the same. A streamer gets each token one step late. transformers
enables it only on MPS (`DeferredStopCheck.is_supported`); `with deferred_stop_check():` widens that to CUDA for the
calls made inside the block, in this thread / async context only.

How: `DeferredStopCheck.is_supported` is wrapped once (the wrapper is marked, so a second copy of this module — the
Hub's remote-code copy beside the installed one — reuses it instead of wrapping again). Outside a block the wrapper is
transformers' own rule. Inside, a CUDA device is judged as transformers judges MPS (assisted decoding never defers, a
returned cache must be croppable), and only the current CUDA device qualifies: `DeferredStopCheck` records its events
on the current device's stream, so for a model on another device the host could read a stale flag.
"""

import contextlib
import contextvars

import torch

_MARK = "_groundvlm_deferred_stop"  # attribute of the installed wrapper: its ContextVar


def _deferred_check_class():
    from transformers.generation import utils

    return getattr(utils, "DeferredStopCheck", None)


def _defers_on(device: torch.device) -> bool:
    """The current CUDA device only (see the module docstring)."""
    return device.type == "cuda" and torch.cuda.is_available() and device.index in (None, torch.cuda.current_device())


def _flag(check) -> contextvars.ContextVar | None:
    """The ContextVar of the wrapper installed on `check.is_supported` (installed here on first use)."""
    current = check.__dict__.get("is_supported")
    if not isinstance(current, staticmethod):
        return None  # not the transformers we know: leave it alone
    flag = getattr(current.__func__, _MARK, None)
    if flag is not None:
        return flag
    base = current.__func__
    flag = contextvars.ContextVar("groundvlm_defer_stop_on_cuda", default=False)

    def is_supported(device, *args, **kwargs):
        if flag.get() and isinstance(device, torch.device) and _defers_on(device):
            device = torch.device("mps")  # transformers' rule for the device it already defers on
        return base(device, *args, **kwargs)

    setattr(is_supported, _MARK, flag)
    check.is_supported = staticmethod(is_supported)
    return flag


@contextlib.contextmanager
def deferred_stop_check(enabled: bool = True, generate_kwargs: dict | None = None):
    """Inside the block, `generate` on the current CUDA device defers its stop check by one step (see the module
    docstring); yields whether it does. `enabled=False`, `synced_gpus` in the call's `generate_kwargs` (it syncs every
    step anyway), or a transformers without `DeferredStopCheck` change nothing."""
    enabled = enabled and not (generate_kwargs or {}).get("synced_gpus")
    check = _deferred_check_class() if enabled else None
    flag = _flag(check) if check is not None else None
    if flag is None:
        yield False
        return
    token = flag.set(True)
    try:
        yield True
    finally:
        flag.reset(token)
