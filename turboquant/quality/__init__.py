"""Quality measurement of TurboQuant KV-cache compression on a trained model.

Modules, one job each (none is imported here, so the numpy-only ones load
without torch or transformers):

* ``tokenizer``   byte-level tokenizer (256 bytes + 4 specials) in Hugging Face format
* ``corpus``      text from the running Python's standard library, split by path hash
* ``needles``     planted key/value retrieval tasks (training documents, evaluation grid)
* ``codecs``      K/V quantize-dequantize: TurboQuant presets (via the reference), bf16, FP8 e4m3
* ``kv_attention`` attention over compressed K/V, registered with transformers' AttentionInterface
* ``activations`` capture of per-layer post-RoPE Q/K/V
* ``metrics``     per layer and KV head: attention fidelity, key/value statistics
* ``calibrate``   outlier channels per layer for the presets with an outlier split
* ``ppl``         perplexity with the compressed cache
* ``retrieval``   needle accuracy by depth and context length
* ``harness``     the CPU report behind ``nox -s quality``
"""
