"""TurboQuant KV-cache compression for vLLM (arXiv 2504.19874).

Subpackages live in sibling folders of this one (pyproject.toml's package-dir mapping):
``turboquant.reference`` -> reference/, ``turboquant.triton_impl`` -> triton_impl/,
``turboquant.torch_impl`` -> torch_impl/, ``turboquant.vllm_integration`` -> vllm_integration/,
``turboquant.conformance`` -> conformance/.  Installed packages get that mapping from the installer; when this folder is
imported straight from a source checkout (``python -m ...`` in the repository root puts the
root first on sys.path), the checkout's root is added to this package's search path so the
same subpackages resolve to the same sources instead of failing to import.
"""

import os as _os

_ROOT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_ROOT, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_ROOT, "reference", "__init__.py")
):
    __path__.append(_ROOT)  # noqa: F821 - the package's own __path__
