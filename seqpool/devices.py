"""Where and in what precision an Encoder runs: device and dtype checks, done before any load.

Pure functions of the request and of what this torch build and machine offer
(``torch.cuda``, ``torch.backends.mps``, ``/proc/cpuinfo``), so the GPU paths are
tested on any CPU by faking those answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqpool.errors import SeqpoolError

_DTYPES = {None: None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, torch.float32: torch.float32, torch.bfloat16: torch.bfloat16}


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """``None``/fp32/bf16 by name or torch dtype; anything else is a user error."""
    if dtype not in _DTYPES:
        raise SeqpoolError(f"unsupported dtype {dtype!r}; use fp32 or bf16")
    return _DTYPES[dtype]


#: Device types an Encoder can run on; anything else is refused before a model loads.
DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device for ``device`` (``None``: CPU), refused with one clear line if this
    machine cannot run it -- checked before any model is loaded, so a typo costs nothing.

    ``cuda`` / ``cuda:N`` need a CUDA build with a GPU (``N < torch.cuda.device_count()``),
    ``mps`` an Apple GPU; names torch does not know (``"gpu0"``) are refused too.
    """
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise SeqpoolError(f"device must be a string such as 'cpu', 'cuda', 'cuda:1' or 'mps', "
                           f"got {type(device).__name__}")
    try:
        resolved = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in DEVICE_TYPES:
        raise SeqpoolError(f"device={str(device)!r} is not a device seqpool can use; pass one of "
                           f"'cpu', 'cuda', 'cuda:N' or 'mps'")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise SeqpoolError(f"device={str(device)!r} needs a CUDA GPU, but this torch ({torch.__version__}, "
                               f"{build}) sees none; use device='cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise SeqpoolError(f"device={str(device)!r} does not exist: this machine has {count} CUDA "
                               f"device(s), cuda:0..cuda:{count - 1}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise SeqpoolError(f"device={str(device)!r} needs an Apple GPU (MPS), which this machine or torch build "
                           f"does not have; use device='cpu'")
    if resolved.type == "cpu":
        resolved = torch.device("cpu")  # "cpu:0" and "cpu" are the same device
    return resolved


def native_bf16_cpu() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); ``None`` if unknown.

    Without it, PyTorch emulates bf16 matrix products and bf16 runs several times
    slower than fp32, so callers can warn before a long run.
    """
    flags = _cpu_flags()
    return None if flags is None else bool(flags & {"avx512_bf16", "amx_bf16"})


def native_int8_cpu() -> bool | None:
    """Whether this x86 CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX);
    ``None`` if unknown (not Linux, not x86).

    Without them oneDNN, under OpenVINO, multiplies int8 through 16-bit pair sums that it keeps
    from overflowing by halving the weights: measured on an AVX2 CPU, ``dtype int8`` ran no faster
    than fp32 on MR (79 vs 79 texts/s), at 0.6x on 256-token texts, and kept cosine 0.995 to the
    fp32 vectors, where a VNNI CPU gives 3x fp32 and 0.997.
    """
    flags = _cpu_flags()
    if flags is None or "sse2" not in flags:
        return None
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags Linux lists in /proc/cpuinfo; ``None`` elsewhere."""
    try:
        return set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return None
