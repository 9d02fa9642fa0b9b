"""Builds and loads the fused CPU kernels (kernels.cpp) as a torch C++ extension at first use.

``ops()`` returns ``torch.ops.turboquant_cpu`` (store_prep, store_encode, decode), or None when the
extension cannot be built here (no compiler, a failed build, a big-endian host, or
``TURBOQUANT_CPU_KERNELS=0`` in the environment); then it warns once and callers take the
plain torch path (torch_impl.store / torch_impl.attention).

The build uses torch.utils.cpp_extension.load (ninja, the host C++ compiler) with -O3, OpenMP and
-march=native, retried without -march=native when the compiler refuses it.  The extension's name
carries a hash of the source, the flags and the host's CPU (machine, model and ISA flags), so a build
directory shared by machines with different CPUs never loads a binary built for another one.  The
build directory is torch's: ``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels.cpp")
ENV_SWITCH = "TURBOQUANT_CPU_KERNELS"  # "0": never build, use the torch path
ARCH_FLAGS = (["-march=native"], [])  # tried in order; [] builds the portable (baseline ISA) code
_LOCK = threading.Lock()
_STATE: dict = {}  # "ops": the loaded ops or None, "error": why not


def _cpu_id() -> str:
    """What the binary depends on: machine, and on Linux the CPU model and ISA flags."""
    parts = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU part"):
                    parts.append(line.strip())
                if len(parts) >= 5:
                    break
    except OSError:
        pass
    return "\n".join(parts)


def _build():
    import torch
    from torch.utils import cpp_extension

    with open(SOURCE, "rb") as f:
        src = f.read()
    errors = []
    for arch in ARCH_FLAGS:
        cflags = ["-O3", "-fopenmp", "-std=c++17", *arch]
        tag = hashlib.sha256(src + " ".join(cflags).encode() + _cpu_id().encode() + torch.__version__.encode())
        name = f"turboquant_cpu_{tag.hexdigest()[:16]}"
        try:
            cpp_extension.load(name=name, sources=[SOURCE], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
                               is_python_module=False, verbose=False)
            return torch.ops.turboquant_cpu
        except Exception as e:  # compiler missing or failing: try the next flags, then give up
            errors.append(f"{' '.join(cflags)}: {type(e).__name__}: {str(e).strip()[-500:]}")
    raise RuntimeError("; ".join(errors))


def ops():
    """The fused kernels' ops, built on first call; None (with one warning) when they cannot be."""
    if "ops" in _STATE:
        return _STATE["ops"]
    with _LOCK:
        if "ops" in _STATE:
            return _STATE["ops"]
        loaded, why = None, None
        if os.environ.get(ENV_SWITCH, "1") == "0":
            why = f"{ENV_SWITCH}=0 in the environment"
        elif sys.byteorder != "little":
            why = "the kernels read little-endian slot fields and this host is big-endian"
        else:
            try:
                loaded = _build()
            except Exception as e:
                why = f"building the C++ extension failed ({e})"
        _STATE["ops"], _STATE["error"] = loaded, why
        if loaded is None:
            warnings.warn(f"turboquant: the fused CPU kernels are not available: {why}; using the slower "
                          "torch path (turboquant.torch_impl) instead", RuntimeWarning, stacklevel=2)
        return loaded


def error() -> str | None:
    """Why ``ops()`` returned None (None when it loaded or was not tried yet)."""
    return _STATE.get("error")


def reset() -> None:
    """Forget the outcome of ``ops()`` (tests: force a rebuild attempt or a failure)."""
    with _LOCK:
        _STATE.clear()
