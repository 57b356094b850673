"""Where and how local training runs: device per centre, mixed precision, memory.

Everything here is opt-in: with the default :class:`Runtime` (CPU, no autocast) the training
loops run exactly the operations they ran before, so CPU results stay bit-identical. On a
GPU, :class:`Runtime` turns on what a careful CUDA loop does: ``torch.autocast`` (bf16, or
fp16 with a ``GradScaler``), ``channels_last`` tensors, pinned host memory with
non-blocking copies, and cuDNN autotuning when input shapes are fixed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedmammo.errors import ConfigError

__all__ = [
    "AMP_DTYPES",
    "Runtime",
    "keep_freed_memory",
    "release_memory",
    "seed_torch",
    "select_device",
]

logger = logging.getLogger(__name__)

#: ``Runtime.amp`` -> autocast dtype.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_allocator_tuned = False


def seed_torch(seed: int) -> torch.Generator:
    """Seed torch's global RNG (model init, dropout) and return a generator of the same seed
    for the batches and augmentation (Python's and NumPy's RNGs are not touched: fedmammo
    draws from its own generators)."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def select_device(spec: str = "cpu") -> torch.device:
    """The torch device for ``spec``: "cpu", "cuda", "cuda:N", "mps" or "auto".

    "auto" (what every centre uses) is the GPU when one is visible (under Ray each centre
    sees the GPU share its ``client_resources.num_gpus`` gave it), else the CPU.
    """
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for but CUDA is not available here")
    return device


@dataclass(frozen=True)
class Runtime:
    """How a training loop uses its device (defaults: plain float32, as on CPU).

    Parameters
    ----------
    device : torch device string, or "auto" (see :func:`select_device`).
    amp : None, "bf16" or "fp16": ``torch.autocast`` for the forward pass and the loss;
        "fp16" adds a ``GradScaler`` (refused under DP: the scale would enter the per-example
        clipping; use "bf16").
    channels_last : move the model and image batches to ``torch.channels_last``.
    pin_memory : page-locked host batches and ``non_blocking`` copies (CUDA only).
    cudnn_benchmark : let cuDNN pick the fastest kernels (input shapes fixed per run).
    """

    device: str = "cpu"
    amp: str | None = None
    channels_last: bool = False
    pin_memory: bool = False
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ConfigError(f"amp must be None or one of {sorted(AMP_DTYPES)}, got {self.amp!r}")

    @classmethod
    def for_gpu(cls, device: str = "cuda", *, amp: str | None = "bf16") -> Runtime:
        """The usual GPU settings: autocast, channels_last, pinned memory, cuDNN autotuning."""
        return cls(device, amp, channels_last=True, pin_memory=True, cudnn_benchmark=True)

    @functools.cached_property
    def torch_device(self) -> torch.device:
        """The resolved torch device."""
        return select_device(self.device)

    @property
    def is_cuda(self) -> bool:
        """Whether this runtime trains on a CUDA device."""
        return self.torch_device.type == "cuda"

    def check_dp(self) -> None:
        """Refuse settings that would break per-example clipping."""
        if self.amp == "fp16":
            raise ConfigError(
                "amp='fp16' scales the loss for its GradScaler, and DP-SGD would clip the "
                "scaled per-example gradients; use amp='bf16' (no scaler) with DP"
            )

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (and memory format); set the cuDNN flag."""
        device = self.torch_device
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(self.cudnn_benchmark)
        if self.channels_last:
            return model.to(device=device, memory_format=torch.channels_last)
        return model.to(device)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """Copy a batch to the device (non-blocking from pinned memory)."""
        device = self.torch_device
        non_blocking = self.pin_memory and device.type == "cuda"
        if non_blocking and not x.is_pinned():
            x = x.pin_memory()
        x = x.to(device, non_blocking=non_blocking)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def loader_kwargs(self) -> dict[str, Any]:
        """DataLoader keyword arguments (pinned memory on CUDA)."""
        return {"pin_memory": True} if self.pin_memory and self.is_cuda else {}

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` for the forward pass and loss, or a no-op without ``amp``."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=AMP_DTYPES[self.amp])

    def scaler(self) -> Any:
        """A ``GradScaler`` for fp16 on CUDA, else None."""
        if self.amp == "fp16" and self.is_cuda:
            return torch.amp.GradScaler("cuda")
        return None


def release_memory(device: torch.device | str | None = None) -> None:
    """Free cached accelerator memory between centres (and collect Python garbage)."""
    gc.collect()
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def keep_freed_memory(trim_mb: int = 256, mmap_mb: int = 32) -> bool:
    """Ask glibc to keep freed heap memory for reuse instead of returning it every step.

    A DP step allocates and frees tens of MB; by default glibc gives the top of the heap
    back to the kernel after each step and the next step page-faults it in again (measured:
    ~2,000 minor faults and 3-5 ms per step of the small DP classifier). Keeps at most
    ``trim_mb`` of free heap; blocks above ``mmap_mb`` are still mapped per allocation.
    A no-op (False) off glibc or with ``FEDMAMMO_MALLOC_TUNING=0``; idempotent.
    """
    global _allocator_tuned
    if _allocator_tuned or os.environ.get("FEDMAMMO_MALLOC_TUNING", "1") == "0":
        return _allocator_tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_mb << 20) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_mb << 20) == 1 and ok
    _allocator_tuned = ok
    logger.debug("glibc malloc tuning %s", "on" if ok else "refused")
    return ok


@contextlib.contextmanager
def peak_memory(device: torch.device | str) -> Iterator[dict[str, float]]:
    """Measure the peak allocated CUDA memory (MB) of the block into the yielded dict."""
    device = torch.device(device)
    out: dict[str, float] = {"peak_mb": 0.0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
