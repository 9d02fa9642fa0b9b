"""vLLM entry points (declared in pyproject.toml).

* ``vllm.general_plugins``  -> :func:`register` (every vLLM process): registers
  the TurboQuant backend as ``AttentionBackendEnum.CUSTOM``.  (On vLLM without
  ``AttentionBackend.customize_spec``, i.e. 0.26, importing the backend module
  installs the spec hook of compat.py; vLLM imports it only in processes that
  build a TurboQuant layer.)
* ``vllm.platform_plugins`` -> :func:`cpu_platform_plugin`: vLLM resolves the
  platform when ``vllm`` is imported, before any ``LLM(...)`` argument or CLI
  flag exists, so this function cannot see whether TurboQuant was asked for.
  It returns our CpuPlatform subclass wherever vLLM's own CPU platform would
  be chosen (and None everywhere else, e.g. on CUDA); that subclass behaves
  exactly like CpuPlatform unless the selected attention backend is ours.
  Set ``TURBOQUANT_VLLM_CPU_PLATFORM=0`` (or leave ``turboquant_cpu`` out of
  ``VLLM_PLUGINS``) to keep vLLM's own CPU platform.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("vllm.turboquant")

BACKEND_PATH = "turboquant.vllm_integration.backend.TurboQuantAttentionBackend"
PLATFORM_PATH = "turboquant.vllm_integration.platform.TurboQuantCpuPlatform"


def register() -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    current = None
    try:
        current = AttentionBackendEnum.CUSTOM.get_path()
    except ValueError:
        pass
    if current not in (None, BACKEND_PATH):
        logger.warning("TurboQuant: AttentionBackendEnum.CUSTOM is already registered to %s; not overriding it "
                       "(TurboQuant is unavailable in this process)", current)
        return
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)


def cpu_platform_plugin() -> str | None:
    if os.environ.get("TURBOQUANT_VLLM_CPU_PLATFORM", "1") == "0":
        return None
    from vllm.platforms import cpu_platform_plugin as builtin_cpu

    if builtin_cpu() is None:
        return None
    return PLATFORM_PATH
