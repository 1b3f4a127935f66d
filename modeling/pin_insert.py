"""The Positional Insert π = ψ(S) of PIN (Dorkenwald et al., CVPR 2024), as a plain torch module.

S is a fixed 1-D transformer sinusoid table over the raster indices of the vision tokens, ψ a small MLP.
π has one row per vision token and is added to the frozen vision encoder's output. It does not depend on
the input, so it is computed once and reused until ψ's parameters change.
"""

import math

import torch
from torch import nn


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed 1-D transformer position table S (Vaswani et al.), as the reference builds it.

    S[p, j] = sin(p / 10000^(2⌊j/2⌋/dim)) for even j and cos(...) for odd j.

    Returns:
        `torch.FloatTensor` of shape `(num_positions, dim)`.
    """
    if num_positions < 1 or dim < 1:
        raise ValueError(f"sinusoid_table needs num_positions >= 1 and dim >= 1, got {num_positions}, {dim}")
    # float64 for the angles, so the table does not depend on the device's float32 pow/sin rounding.
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angles = position / torch.pow(10000.0, exponent)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()


class PinInsert(nn.Module):
    """π = ψ(S): the sinusoid table S refined by the MLP ψ.

    ψ = Linear(d_s, h_1) → SiLU → LayerNorm(h_1) → … → Linear(h_k, D). The reference uses SiLU + LayerNorm, not the
    SwiGLU the paper's text names; its `nn.Sequential` indices (0, 2, 3, 5, 6 for two hidden layers) are kept, so
    reference checkpoints (`{"mlp": state_dict}`) load as `psi.*`.

    With `num_positions=256, output_dim=1024` (OpenFlamingo) ψ has 1,217,280 parameters; with 257 / 1408 (BLIP-2)
    1,512,576. S is a non-persistent buffer: it is rebuilt from the config, never saved.

    Caching: when no gradient is needed (`torch.no_grad()`, or ψ frozen), π is computed once and reused while ψ's
    parameters stay the same tensors with the same version counters. Optimizer steps, `load_state_dict` and
    `.to(...)` all change a parameter's version or storage, so they invalidate the cache without any bookkeeping by
    the caller. When a gradient is needed, π is recomputed on every call, because a cached autograd graph would be
    freed by the first `backward()`.
    """

    def __init__(
        self,
        num_positions: int,
        output_dim: int,
        sinusoid_dim: int = 64,
        hidden_dims: tuple[int, ...] = (512, 768),
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.num_positions = num_positions
        self.output_dim = output_dim
        self.register_buffer("sinusoid", sinusoid_table(num_positions, sinusoid_dim), persistent=False)
        layers: list[nn.Module] = []
        in_dim = sinusoid_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(in_dim, hidden), nn.SiLU(), nn.LayerNorm(hidden, eps=layer_norm_eps)]
            in_dim = hidden
        layers.append(nn.Linear(in_dim, output_dim))
        self.psi = nn.Sequential(*layers)
        self._cached_pi: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def _state_key(self) -> tuple:
        tensors = [*self.psi.parameters(), self.sinusoid]
        return tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def forward(self) -> torch.Tensor:
        """Returns π of shape `(num_positions, output_dim)` in ψ's dtype and device."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.psi.parameters()):
            self._cached_pi, self._cache_key = None, None
            return self.psi(self.sinusoid)
        key = self._state_key()
        if self._cached_pi is None or key != self._cache_key:
            with torch.no_grad():
                self._cached_pi = self.psi(self.sinusoid)
            self._cache_key = key
        return self._cached_pi

    @staticmethod
    def default_linear_init_(linear: nn.Linear, init) -> None:
        """PyTorch's own `nn.Linear` initialisation (the reference never re-initialises ψ), via `init` helpers."""
        init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
        if linear.bias is not None:
            bound = 1 / math.sqrt(linear.weight.shape[1])
            init.uniform_(linear.bias, -bound, bound)
