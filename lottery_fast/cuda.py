"""The optional CUDA core: whether it is here, and the raw-pointer plumbing its callers share.

``lottery_fast._cuda`` is built by ``pip install .`` when a CUDA toolkit is found (CMake option
``LOTTERY_FAST_CUDA=AUTO``, the default; ``ON`` fails without nvcc, ``OFF`` skips it). Like the CPU
core it takes device pointers, shapes and the current stream's handle, and links no libtorch, so
its kernels run on torch's current stream and order with torch's own work. Layers and pruning
functions dispatch on the tensors' device: with the module absent (or no GPU), CUDA tensors run
through torch's own ops instead.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from ._buffers import kernels_accept

try:  # the CPU-only build has no such module
    from . import _cuda as _module
except ImportError:  # pragma: no cover - depends on the build
    _module = None


def built() -> bool:
    """Whether the CUDA core was compiled into this installation."""
    return _module is not None


def is_available() -> bool:
    """Whether the CUDA kernels can run here: compiled in, and torch sees a GPU."""
    return _module is not None and torch.cuda.is_available()


def compiled_archs() -> Optional[str]:
    """The CMake CUDA architectures the core was built for (``None`` without the CUDA core)."""
    return None if _module is None else _module.compiled_archs()


def core():
    """The compiled module; callers check :func:`kernels_take` (or :func:`built`) first."""
    if _module is None:
        raise RuntimeError("lottery_fast was built without its CUDA core (no CUDA toolkit at install time; "
                           "reinstall with LOTTERY_FAST_CUDA=ON to require it)")
    return _module


def kernels_take(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether the CUDA kernels can take these tensors: the core is built, and they are CUDA tensors
    the kernels accept (see :func:`lottery_fast._buffers.kernels_accept`)."""
    return _module is not None and x.device.type == "cuda" and kernels_accept(x, weight, bias)


def stream_of(device: torch.device) -> int:
    """Handle (cudaStream_t as an int) of torch's current stream on ``device``."""
    # The raw getter skips building a torch.cuda.Stream object: a few microseconds per kernel call,
    # which is most of the launch cost of a small layer.
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return raw(device.index if device.index is not None else torch.cuda.current_device())
    return torch.cuda.current_stream(device).cuda_stream


def on_device(device: torch.device) -> ContextManager:
    """Make ``device`` current for the kernel launches (a no-op when it already is)."""
    if device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def device_ptr(t: torch.Tensor, name: str, device: torch.device) -> int:
    """Data pointer of a contiguous tensor on ``device``, after checking what the kernels rely on."""
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous() first)")
    return t.data_ptr()
