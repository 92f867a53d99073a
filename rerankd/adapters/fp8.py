"""FP8 linear layers for the torch engine (``--quantize fp8``, Hopper and Ada GPUs).

Weights are stored as ``float8_e4m3fn`` with one scale per output channel; activations are
quantized per row (token) on the fly, and ``torch._scaled_mm`` multiplies the two with its rowwise
scaling into the model's own dtype. Per-channel and per-token scales keep an outlier in one row or
channel from costing the others their precision, which per-tensor scaling would; no calibration
data is needed. Only the transformer's projections are replaced: embeddings, norms and the answer
head stay in the model's dtype (``docs/engines.md#fp8`` has the fidelity measured).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FP8Linear", "fp8_supported", "quantize_linears"]

_E4M3 = torch.float8_e4m3fn
_E4M3_MAX = float(torch.finfo(_E4M3).max)
# FP8 GEMMs need both matrix dimensions of the weight in multiples of 16.
_ALIGN = 16


def fp8_supported(device: torch.device) -> str | None:
    """None where FP8 matrix multiplies run on ``device``, else why not."""
    if device.type != "cuda":
        return "FP8 needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"FP8 needs compute capability 8.9 or later (Ada, Hopper); this GPU has {major}.{minor}"
    return None


class FP8Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` in FP8 (per output channel scales) and ``x`` quantized per row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _E4M3_MAX
        # Stored (out, in) row-major, so that its transpose is the column-major operand _scaled_mm wants.
        self.weight = nn.Parameter((weight.float() / scale).to(_E4M3), requires_grad=False)
        self.weight_scale: torch.Tensor
        self.register_buffer("weight_scale", scale.t().contiguous(), persistent=False)  # (1, out)
        bias = linear.bias
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / _E4M3_MAX
        q = (rows.float() / scale).clamp(-_E4M3_MAX, _E4M3_MAX).to(_E4M3)
        out = torch._scaled_mm(
            q,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=x.dtype,
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3"


def quantize_linears(module: nn.Module, *, skip: tuple[str, ...] = ("lm_head", "score", "classifier")) -> int:
    """Replace every eligible ``nn.Linear`` below ``module`` by an :class:`FP8Linear`, in place.
    Heads named in ``skip`` keep their precision (they are small, and the score comes out of
    them). Returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if name in skip:
            continue
        if isinstance(child, nn.Linear) and _eligible(child):
            setattr(module, name, FP8Linear(child))
            replaced += 1
        else:
            replaced += quantize_linears(child, skip=skip)
    return replaced


def _eligible(linear: nn.Linear) -> bool:
    return linear.in_features % _ALIGN == 0 and linear.out_features % _ALIGN == 0
