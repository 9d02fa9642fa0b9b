"""What the launch code needs to know about the GPU: its SM count (cached per device index).
Kept apart from launch.py so that the kernels' own modules (rotate, store_mse) can size persistent
grids without importing the launch layer (launch imports merge, which imports rotate)."""

from __future__ import annotations

import torch

_SM_COUNT: dict = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the CPU interpreter)."""
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


# What bounds how many blocks of one kernel an SM holds at once (CUDA occupancy, the rules of CUDA's
# cuda_occupancy.h), for launch rules that size grids in whole waves.  The driver reserves 1 KB of shared
# memory per resident block on sm_80+ (cudaDevAttrReservedSharedMemoryPerBlock); every CUDA GPU from sm_70
# to sm_90 has 64 K 32-bit registers an SM in 4 sub-partitions (one per warp scheduler) of 16 K each: a warp
# takes its registers from one sub-partition, in units of 256 (regs a thread x 32, rounded up), so a
# sub-partition holds floor(16,384 / that) warps.  At 152 or 144 registers a thread that is 3 warps, 12 an SM
# (not 65,536 / (32 x 152) = 13).  At most 32 blocks an SM (16-24 on sm_86 / sm_89: their warp slots bound
# first for the one-warp programs that use this).
RESERVED_SMEM_PER_BLOCK = 1024
REGS_PER_SM = 65536
REG_SUB_PARTITIONS = 4
REG_ALLOC_UNIT = 256  # registers a warp is given at a time
MAX_BLOCKS_PER_SM = 32
_SMEM_PER_SM: dict = {}


def resident_blocks(device: torch.device, shared_bytes: int, warps: int, regs_per_thread: int) -> int:
    """Blocks of a kernel with this shared memory (bytes), warps a block and registers a thread (0: not
    capped, counted as 255) one SM holds at once, by shared memory, registers (a sub-partition's, as above)
    and warp slots; 1 off CUDA.
    The H200 and H100: 233,472 bytes of shared memory an SM, so 13 blocks of 16 KB (+ 1 KB reserved each) by
    shared memory; one-warp blocks at 152 registers: 12 by registers."""
    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMEM_PER_SM:
        p = torch.cuda.get_device_properties(idx)
        _SMEM_PER_SM[idx] = (p.shared_memory_per_multiprocessor, p.max_threads_per_multi_processor // p.warp_size)
    smem, warp_slots = _SMEM_PER_SM[idx]
    by_smem = smem // (shared_bytes + RESERVED_SMEM_PER_BLOCK)
    return max(1, min(by_smem, blocks_by_registers(warps, regs_per_thread), warp_slots // warps, MAX_BLOCKS_PER_SM))


def blocks_by_registers(warps: int, regs_per_thread: int) -> int:
    """Blocks of ``warps`` warps at ``regs_per_thread`` registers a thread (0: not capped, counted as 255) that an
    SM's registers hold, a sub-partition's 16 K at a time (above): 12 one-warp blocks at 152, 3 four-warp blocks at
    up to 168 (2 at 169-176)."""
    regs_per_warp = -(-32 * (regs_per_thread or 255) // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    return (REGS_PER_SM // REG_SUB_PARTITIONS // regs_per_warp) * REG_SUB_PARTITIONS // warps
