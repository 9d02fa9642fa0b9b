"""The metadata builder's per-step plan inputs: host sequence lengths on every vLLM version."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from turboquant.triton_impl import plan_attention
from turboquant.vllm_integration import compat


def test_host_seq_lens_prefers_the_host_copies_vllm_keeps():
    dev = torch.tensor([5, 9, 40, 7])
    bound = torch.tensor([5, 9, 40, 7, 0])  # padded past num_reqs
    assert compat.host_seq_lens(SimpleNamespace(num_reqs=4, seq_lens=dev, seq_lens_cpu_upper_bound=bound)).tolist() \
        == [5, 9, 40, 7]
    assert compat.host_seq_lens(SimpleNamespace(num_reqs=3, seq_lens=dev, seq_lens_cpu=bound)).tolist() == [5, 9, 40]
    # neither (a version with no host copy): a copy of the device tensor
    assert compat.host_seq_lens(SimpleNamespace(num_reqs=2, seq_lens=dev)).tolist() == [5, 9]


def test_plan_from_a_reordered_step():
    """vLLM puts one-token requests first (reorder_batch_threshold = 1): those take the decode
    kernel, the rest the prefill path, with their own cumulative lengths."""
    cm = SimpleNamespace(num_reqs=4, seq_lens=torch.tensor([5, 9, 40, 7]),
                         query_start_loc_cpu=torch.tensor([0, 1, 2, 34, 41]))
    plan = plan_attention(cm.query_start_loc_cpu, compat.host_seq_lens(cm), "cpu")
    assert plan.num_decodes == 2
    assert plan.prefill.q_lens == (32, 7) and plan.prefill.k_lens == (40, 7)
    assert plan.prefill.first_token == 2
