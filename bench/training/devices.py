"""Where and in what precision a model trains: the device, native bf16 on the CPU, autocast, and peak
training memory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench.registry import BenchError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; a one-line error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here: use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise BenchError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bf16 matmuls natively


def native_bf16_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16). Without them oneDNN
    emulates bf16 and autocast trains slower than float32; read from ``/proc/cpuinfo`` (False elsewhere)."""
    try:
        flags = set(cpuinfo.read_text(errors="replace").split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def check_amp(device: torch.device | str, amp: bool) -> None:
    """Refuse bf16 training where it would be emulated: a one-line error, not a slow run."""
    if amp and torch.device(device).type == "cpu" and not native_bf16_cpu():
        raise BenchError("--amp: this CPU has no native bf16 (neither AVX512-BF16 nor AMX-BF16 in /proc/cpuinfo), "
                         "so bf16 autocast would be emulated and slower than float32; drop --amp")


def training_precision(amp: bool) -> str:
    """What records call the precision a model trained in."""
    return "bf16-autocast" if amp else "fp32"


def autocast(device: torch.device | str, amp: bool):
    """bf16 autocast on ``device`` (CUDA or CPU) when ``amp``; a no-op context otherwise. The master
    weights, the optimizer and the loss stay float32 (autocast runs matmuls and convolutions in bf16)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


class TrainingMemory:
    """Peak memory a training takes above what the process held when it began: on CUDA the allocator's
    peak (``torch.cuda.max_memory_allocated``); on a Linux CPU the process's peak resident set
    (``VmHWM``, reset through ``/proc/self/clear_refs``) less its resident set at the start, so weights,
    gradients, optimizer state, activations and batches all count. ``bytes`` is None where neither
    applies (another OS), and ``how`` says which was measured."""

    STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.how = "unavailable"

    def _status_bytes(self, key: str) -> int | None:
        try:
            for line in self.STATUS.read_text().splitlines():
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            pass
        return None

    def __enter__(self) -> "TrainingMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._status_bytes("VmRSS")
        try:
            self.CLEAR_REFS.write_text("5")  # Linux >= 4.0: the peak resident set restarts from the current one
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.bytes, self.how = torch.cuda.max_memory_allocated(self.device) - self._start, "cuda allocator peak"
            return
        peak = self._status_bytes("VmHWM")
        if self._start is not None and peak is not None:
            self.bytes, self.how = max(0, peak - self._start), "process peak RSS above its start"


def on_device(device: torch.device | str, model: nn.Module, companions=(), extra_parameters=None) -> None:
    """Move ``model``, ``companions`` and loose ``extra_parameters`` to ``device`` in place."""
    for module in (model, *companions):
        module.to(device)
    with torch.no_grad():
        for parameter in extra_parameters or []:
            parameter.data = parameter.data.to(device)
