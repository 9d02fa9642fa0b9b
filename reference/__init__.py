"""NumPy reference of every TurboQuant stage: the oracle and executable spec.

Read in this order: codebook -> rng -> rotation -> quantizer (Alg. 1/2) -> qjl ->
values -> pack -> slot -> cache -> attention.
"""

from .attention import decode_attention, dense_attention, paged_attention
from .cache import new_cache, store
from .quantizer import layer_params
from .slot import decode_slots, encode_slots, encode_stages

__all__ = [
    "decode_attention", "dense_attention", "paged_attention", "new_cache", "store",
    "layer_params", "decode_slots", "encode_slots", "encode_stages",
]
