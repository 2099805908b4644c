"""The environment that produced a figure, recorded with every run (rows from different machines
must never be silently mixed)."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

from bench.measure.probe import cpu_model, package_version, steady_allocator

_PACKAGES = ("torch", "torchaudio", "numpy", "onnxruntime", "optuna", "torch-pruning", "hrf-bench")


@functools.cache
def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Flat ``env_*`` fields: host, CPU, cores, threads, Python and library versions, git commit."""
    fields = {
        "env_host": socket.gethostname(),
        "env_cpu": cpu_model(),
        "env_cores": os.cpu_count(),
        "env_torch_threads": torch.get_num_threads(),
        "env_python": platform.python_version(),
        "env_platform": platform.platform(),
        "env_cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "env_git_commit": git_commit(),
        "env_allocator": steady_allocator(),  # timings are taken with it (``bench.measure.probe.time_adaptively``)
    }
    fields.update({f"env_{p.replace('-', '_')}": package_version(p) for p in _PACKAGES})
    return fields
