"""End-to-end runs through vLLM (and the equal-layers comparison on the NumPy reference)."""
