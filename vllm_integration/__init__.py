"""TurboQuant KV-cache compression as a vLLM plugin (see README.md in this folder).

Importing this package does not import vLLM; the entry points live in
``turboquant.vllm_integration.plugin``.
"""

from .config import OPTION_DEFAULTS, TurboQuantOptions, parse_layer_index

BACKEND_NAME = "CUSTOM"  # what to pass as attention_backend / --attention-backend

__all__ = ["BACKEND_NAME", "OPTION_DEFAULTS", "TurboQuantOptions", "parse_layer_index"]
