"""Model FLOPs and peak FLOP/s: the two halves of model FLOP utilisation (MFU).

Model FLOPs of a training step are three times its forward pass, counted by PyTorch's FLOP
counter (the usual convention: backward costs two forwards; recomputation under activation
checkpointing is not model work). The peak is the GPU's dense bf16 figure when it is a known
one, else a square matmul measured on the spot.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

# dense bf16 tensor-core FLOP/s from the vendor's data sheets, by a part of the device name
KNOWN_PEAKS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


def matmul_flops(bf16: bool, device: torch.device, seconds: float = 1.5) -> float:
    """Sustained FLOP/s of a square matmul at this precision on this device."""
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def model_flops(
    model: nn.Module,
    batch: tuple[Tensor, ...],
    loss_fn: Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, dict]],
    bf16: bool,
) -> float:
    """Model FLOPs of one training step (forward + backward) on ``batch``: 3 x forward."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    device = batch[0].device
    with counter, torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        loss_fn(model, batch)
    return 3.0 * counter.get_total_flops()


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of one CUDA device (None on CPU: no meaningful peak)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for part, peak in KNOWN_PEAKS:
        if part in name:
            return peak
    return matmul_flops(True, device)
