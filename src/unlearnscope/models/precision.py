"""Training precision: plain float32, or bfloat16 autocast around the forward and the loss.

`bf16-autocast` keeps float32 master weights: parameters, gradients and optimizer state stay
float32, and only the forward and loss of a training step run under
`torch.autocast(device_type, dtype=torch.bfloat16)` (matrix products in bfloat16, reductions
and the losses' log-softmax in float32). The backward runs outside the context; autograd
replays each op in the dtype the forward used. Evaluations (answer losses, MRD, circuits,
TOFU metrics) never use it and stay float32.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

from unlearnscope.errors import DataError, UnknownNameError

PRECISIONS = ("float32", "bf16-autocast")
# torch's probes of the CPU instructions that run bfloat16 matrix products natively
_NATIVE_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def check_precision(precision: str) -> str:
    """`precision` if it is one of `PRECISIONS`, else an `UnknownNameError`."""
    if precision not in PRECISIONS:
        raise UnknownNameError("precision", precision, list(PRECISIONS))
    return precision


def training_autocast(precision: str, model: torch.nn.Module) -> AbstractContextManager:
    """The context a training step's forward and loss run in: nothing for `float32`, bfloat16
    autocast on the device of `model`'s parameters for `bf16-autocast`, which refuses
    trainable parameters that are not float32 (they are the master weights)."""
    if check_precision(precision) == "float32":
        return nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    wrong = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if wrong:
        raise DataError(f"bf16-autocast keeps float32 master weights, but trainable parameters "
                        f"are {', '.join(wrong)}: load the model with --dtype float32",
                        field="precision")
    device_type = params[0].device.type
    if device_type == "cpu" and not native_cpu_bf16():
        warnings.warn("bf16-autocast on a CPU without AVX512-BF16 or AMX emulates the bfloat16 "
                      "matrix products: a training step runs many times slower than in float32 "
                      "(SmolLM2-135M, batch 8, 2 AVX2 cores: over 190 s against 10 s); use "
                      "precision float32 on this machine", RuntimeWarning, stacklevel=2)
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def native_cpu_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products in hardware (AVX512-BF16 or AMX); True
    where torch cannot tell."""
    probes = [getattr(torch.cpu, name, None) for name in _NATIVE_BF16_PROBES]
    if any(probe is None for probe in probes):
        return True
    return any(probe() for probe in probes)
