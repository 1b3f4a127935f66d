"""CUDA graphs for Groma's static-shape vision side (inference only).

At batch 1 the vision side (DINOv2-L, the 12-layer deformable proposer with 300 queries, the region encoder's fusion
rounds) is bound by kernel launches, not by the GPU: eager PyTorch spends far more time issuing its ~1-2k small
kernels than the GPU spends running them. Everything from the pixels to the proposer's boxes/scores and the fused
region-encoder maps has static shapes (no host syncs, no data-dependent shapes; the proposer's top-k has a fixed k),
so it is captured once per (input shape, dtype, device) into a `torch.cuda.CUDAGraph` and replayed. Region selection
(threshold, NMS: data-dependent) and everything after it stay eager.

The runner is a no-op (returns None, the caller runs eagerly) unless: the input is on CUDA, autograd is off, autocast
is off, no capture/compile/trace is in progress, no global forward hooks exist, and every covered module is in eval
mode, has no forward (pre-)hooks (transformers' own output-capturing hooks aside), and holds its parameters/buffers on the input's device. Hooks of covered modules
would otherwise run only once, at capture.

Validity: a graph reads parameters by address. Weights changed in place (`load_state_dict`'s copy, optimiser steps)
are therefore seen by the next replay; weights moved to new memory (`.to()`, `param.data = ...`) change the
addresses, which the runner checks on every call (data pointers of all covered tensors, ~0.1 ms) and recaptures.
Replacing parameter objects or submodules is caught by the owning model, which calls `reset()` from `_apply`,
`train(True)` and `load_state_dict`; after other surgery call `model.reset_cuda_graphs()`.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn


class _CapturedGraph:
    """One captured graph with its static input buffer and static outputs."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", static_input: torch.Tensor, static_outputs: tuple):
        self.graph = graph
        self.static_input = static_input
        self.static_outputs = static_outputs


def _global_forward_hooks_present() -> bool:
    # nn.Module keeps the hooks of `register_module_forward_(pre_)hook` in module-level dicts; they would fire only at
    # capture time, so their presence means "run eagerly".
    module = nn.modules.module
    return bool(getattr(module, "_global_forward_hooks", None) or getattr(module, "_global_forward_pre_hooks", None))


def _is_output_capturing_hook(hook) -> bool:
    """transformers (5.x) installs these forward hooks once per model, persistently, to implement
    `output_hidden_states`/`output_attentions`: they append a layer's output to the collector of the running forward
    (a no-op otherwise). During capture they collect the very tensors the graph then writes on replay, so they do not
    prevent capture (DINOv2's `output_hidden_states=True` relies on them)."""
    return getattr(hook, "__name__", "") == "output_capturing_hook" and getattr(hook, "__module__", "").startswith(
        "transformers."
    )


def _has_foreign_hooks(module: nn.Module) -> bool:
    for hooks in (module._forward_hooks, module._forward_pre_hooks):
        if hooks and not all(_is_output_capturing_hook(hook) for hook in hooks.values()):
            return True
    return False


class GromaVisionCudaGraphs:
    """Captures `fn(x) -> tuple of tensors` per (shape, dtype, device, inference mode) of `x` and replays it.

    `fn` must be free of host syncs and have static shapes. All graphs share one memory pool: `run` clones the static
    outputs right after each replay, so no graph's outputs are needed once another graph replays (the condition under
    which PyTorch allows graphs to share a pool).
    """

    def __init__(self, warmup_iters: int = 3):
        self.warmup_iters = warmup_iters
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self._pool = None
        self._modules: list[nn.Module] | None = None
        self._tensors: list[torch.Tensor] | None = None
        self._devices: set[torch.device] = set()
        self._pointers: list[int] | None = None
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}

    def side_stream(self, device: torch.device) -> "torch.cuda.Stream":
        """A second stream on `device` for work `fn` may run concurrently inside a capture (created on first use,
        which is the first warm-up call: stream creation is not an operation to issue while a stream captures)."""
        if device not in self._side_streams:
            self._side_streams[device] = torch.cuda.Stream(device)
        return self._side_streams[device]

    def __len__(self) -> int:
        return len(self._graphs)

    # A copied or unpickled model starts without graphs (they hold device memory and addresses of the original).
    def __deepcopy__(self, memo):
        return type(self)(self.warmup_iters)

    def __getstate__(self):
        return {"warmup_iters": self.warmup_iters}

    def __setstate__(self, state):
        self.__init__(state["warmup_iters"])

    def reset(self) -> None:
        """Drop every graph (and its memory) and forget the covered modules; the next `run` recaptures."""
        self._drop_graphs()
        self._modules = self._tensors = None
        self._devices = set()

    def _drop_graphs(self) -> None:
        self._graphs.clear()
        self._pool = None
        self._pointers = None

    @staticmethod
    def applicable(x: torch.Tensor) -> bool:
        """Global conditions for graph use (cheap; module conditions are checked in `run`)."""
        return (
            x.is_cuda
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cuda")
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing()
            and not _global_forward_hooks_present()
        )

    def _covered_pointers(self, modules: Sequence[nn.Module], device: torch.device) -> list[int] | None:
        """Data pointers of every parameter/buffer of `modules`, or None when the modules must run eagerly."""
        if self._modules is None:
            self._modules = [m for root in modules for m in root.modules()]
            self._tensors = [
                t for m in self._modules for t in (*m._parameters.values(), *m._buffers.values()) if t is not None
            ]
            # accelerate's dispatch/offload hooks replace `forward` and move weights per call: never capture those
            offloaded = any(getattr(m, "_hf_hook", None) is not None for m in self._modules)
            self._devices = {t.device for t in self._tensors} | ({torch.device("meta")} if offloaded else set())
        if self._devices != {device}:
            return None
        for m in self._modules:
            if m.training or ((m._forward_hooks or m._forward_pre_hooks) and _has_foreign_hooks(m)):
                return None
        return [t.data_ptr() for t in self._tensors]

    def run(self, fn: Callable[[torch.Tensor], tuple], x: torch.Tensor, modules: Sequence[nn.Module]):
        """`fn(x)` through a CUDA graph: a tuple of fresh tensors equal to eager `fn(x)`, or None when not applicable
        (then the caller runs `fn` eagerly). `modules` are the modules `fn` runs (their state decides validity)."""
        if not self.applicable(x):
            return None
        pointers = self._covered_pointers(modules, x.device)
        if pointers is None:
            return None
        if pointers != self._pointers:  # weights live elsewhere now: every graph reads stale addresses
            self._drop_graphs()
            self._pointers = pointers
        key = (tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled())
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(fn, x)
        captured.static_input.copy_(x)
        captured.graph.replay()
        return tuple(t.clone() for t in captured.static_outputs)

    def _capture(self, fn: Callable[[torch.Tensor], tuple], x: torch.Tensor) -> _CapturedGraph:
        with torch.cuda.device(x.device):
            static_input = torch.empty_like(x, memory_format=torch.contiguous_format)
            static_input.copy_(x)
            # Warm-up on a side stream (PyTorch's CUDA-graph recipe): lazy initialisation (cuBLAS/cuDNN handles and
            # workspaces, kernel selection) must happen before capture, and not on the stream being captured.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup_iters):
                    fn(static_input)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_outputs = tuple(fn(static_input))
            if self._pool is None:
                self._pool = graph.pool()
        return _CapturedGraph(graph, static_input, static_outputs)


__all__ = ["GromaVisionCudaGraphs"]
