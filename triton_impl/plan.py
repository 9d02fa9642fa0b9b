"""Host-side planning of one step's attention, once per step for every layer (FlashInfer's plan/run
split): which sequences take the decode kernel, which the prefill path, and the prefill path's
cumulative lengths and workspace size.  Built by the vLLM metadata builder from the host copies of
``query_start_loc`` / ``seq_lens`` it already has, so no layer waits on the device.

Sequences are expected decodes first (vLLM's batch reordering, ``reorder_batch_threshold = 1``):
the leading run of one-row sequences takes ``decode_attention``; every later sequence, one-row or
not, takes the prefill path.  Any order is correct; only the split moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PrefillPlan:
    """Sequences ``first_seq .. first_seq + num_seqs - 1`` (query rows from ``first_token`` on)."""

    first_seq: int
    first_token: int
    q_lens: tuple[int, ...]  # query rows per sequence (exact)
    k_lens: tuple[int, ...]  # cached tokens per sequence after this step's store (exact)
    cu_q: torch.Tensor  # [num_seqs + 1] int32, device: cumulative q_lens from 0
    cu_k: torch.Tensor  # [num_seqs + 1] int32, device: cumulative k_lens from 0 (workspace rows)
    _parts: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)

    @property
    def max_q(self) -> int:
        return max(self.q_lens, default=0)

    @property
    def max_k(self) -> int:
        return max(self.k_lens, default=0)

    @property
    def total_k(self) -> int:
        return sum(self.k_lens)

    def parts(self, max_workspace_tokens: int) -> list[PrefillPlan]:
        """The plan cut into runs of whole sequences of at most ``max_workspace_tokens`` cached tokens
        each (a longer sequence is a run of its own): the prefill path decodes one run at a time, so
        its workspace stays bounded however many long sequences a step prefills."""
        if self.total_k <= max_workspace_tokens:
            return [self]
        if max_workspace_tokens not in self._parts:
            runs, start, tokens = [], 0, 0
            for i, k in enumerate(self.k_lens):
                if i > start and tokens + k > max_workspace_tokens:
                    runs.append((start, i))
                    start, tokens = i, 0
                tokens += k
            runs.append((start, self.num_seqs))
            first_token = self.first_token
            out = []
            for a, b in runs:
                out.append(_prefill_plan(self.first_seq + a, first_token, self.q_lens[a:b], self.k_lens[a:b],
                                         self.cu_q.device))
                first_token += sum(self.q_lens[a:b])
            self._parts[max_workspace_tokens] = out
        return self._parts[max_workspace_tokens]


@dataclass(frozen=True)
class AttentionPlan:
    """``num_decodes`` leading one-row sequences (decode kernel); the rest, if any: ``prefill``."""

    num_decodes: int
    prefill: PrefillPlan | None


def _cumsum(lens, device) -> torch.Tensor:
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    if lens:
        cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int64), 0).to(torch.int32)
    return cu.to(device, non_blocking=True) if torch.device(device).type != "cpu" else cu


def _prefill_plan(first_seq, first_token, q_lens, k_lens, device) -> PrefillPlan:
    return PrefillPlan(first_seq, first_token, tuple(q_lens), tuple(k_lens), _cumsum(q_lens, device),
                       _cumsum(k_lens, device))


def plan_attention(query_start_loc_cpu: torch.Tensor, seq_lens_cpu: torch.Tensor, device) -> AttentionPlan:
    """The plan of a step from host copies of ``query_start_loc`` [num_seqs + 1] and ``seq_lens``
    [num_seqs] (exact for every sequence after the leading decodes)."""
    qsl = [int(x) for x in torch.as_tensor(query_start_loc_cpu).tolist()]
    sl = [int(x) for x in torch.as_tensor(seq_lens_cpu).tolist()]
    if len(qsl) != len(sl) + 1:
        raise ValueError(f"query_start_loc_cpu must have num_seqs + 1 = {len(sl) + 1} entries, got {len(qsl)}")
    q_lens = [b - a for a, b in zip(qsl[:-1], qsl[1:])]
    if any(q < 0 for q in q_lens) or any(q > k for q, k in zip(q_lens, sl)):
        raise ValueError("query_start_loc_cpu must be non-decreasing and no sequence may have more query rows "
                         "than seq_lens")
    nd = 0
    while nd < len(q_lens) and q_lens[nd] == 1:
        nd += 1
    if nd == len(q_lens):
        return AttentionPlan(nd, None)
    return AttentionPlan(nd, _prefill_plan(nd, qsl[nd] - qsl[0], q_lens[nd:], sl[nd:], device))
