"""decode_mma_ring: the tile ring of decode_mma.py's kernel (Gluon): cp.async copies of a split's 16-token
tiles from the paged cache into a ring of shared-memory stages.

A tile is TILE slots of one KV head on one page: SW words a slot, one contiguous, 16-byte aligned run of
the cache (the page from the block table), copied as one run of 16-byte vectors, coalesced, the words past
the sequence's end zero-filled.  Stage k of the ring is words RW0 + k * STAGE_WORDS .. of its int32 view.
Each tile's copies are one commit group, so that ``async_copy.wait_group(n)`` in the tile loop waits for
all but the newest n tiles, and a barrier then makes every lane's copies visible.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from .decode_mma_operands import TILE

# Triton 3.7 renamed async_copy_global_to_shared to async_load (same arguments) and thread_barrier to
# barrier.  The kernel calls whichever this Triton has, picked here: its source must not name the
# other one (the JIT resolves every attribute of a kernel's source for its cache key, even in an
# untaken constexpr branch).
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
_thread_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
# and made shared_memory_descriptor._reinterpret public as reinterpret (the same arguments)
_reinterpret = (getattr(gl.shared_memory_descriptor, "reinterpret", None)
                or getattr(gl.shared_memory_descriptor, "_reinterpret", None))  # (copy_tile_to_row needs it)


@gluon.jit
def barrier():
    """All threads of the program (one warp) reach this point, their shared-memory writes visible."""
    _thread_barrier()


@gluon.jit
def _copy_tile(stage, ptrs, mask):
    """cp.async of a tile's words into a ring stage (masked words are zero-filled)."""
    _async_load(stage, ptrs, mask=mask)


@gluon.jit
def tile_page(tn, end, bt_row, block_size):
    """The block-table entry (page) of the tile of tokens [tn, tn + 16); 0 for a tile at or past ``end``."""
    return gl.load(bt_row + tn // block_size, mask=tn < end, other=0)


@gluon.jit
def page_source(pg, tn, head_base, block_size, stride_cb, stride_cs):
    """Address of the first cache word of the tile of tokens [tn, tn + 16) on page pg."""
    return head_base + pg.to(gl.int64) * stride_cb + ((tn % block_size) // TILE) * (TILE * stride_cs)


@gluon.jit
def tile_source(tn, end, bt_row, head_base, block_size, stride_cb, stride_cs):
    """Address of the first cache word of the tile of tokens [tn, tn + 16) of this sequence and KV head
    (its page from the block table; page 0 for a tile at or past ``end``, whose words are masked)."""
    return page_source(tile_page(tn, end, bt_row, block_size), tn, head_base, block_size, stride_cb, stride_cs)


@gluon.jit
def page_source_wide(pg, tn, head_base, block_size, stride_cb, stride_cs):
    """page_source with the page's offset as one 32 x 32 -> 64-bit multiply (the tile loop's copies): pages and
    the block stride (words) are non-negative and below 2^32, where the signed 64-bit product takes five
    instructions."""
    off = pg.to(gl.uint32, bitcast=True).to(gl.uint64) * stride_cb.to(gl.uint32).to(gl.uint64)
    return head_base + off.to(gl.int64, bitcast=True) + ((tn % block_size) // TILE) * (TILE * stride_cs)


@gluon.jit
def _copy_words(n_tokens, SW: gl.constexpr):
    """Words of a tile to copy for its first n_tokens tokens, rounded up to whole 16-byte vectors
    (which stay inside the tile's TILE slots, a multiple of 16 bytes)."""
    n = gl.minimum(gl.maximum(n_tokens, 0), TILE) * SW
    return gl.multiple_of((n + 3) // 4 * 4, 4)


@gluon.jit
def _copy_tile_words(stage, src, w_copy, n_tokens, SW: gl.constexpr):
    """cp.async of a tile's first n_tokens slots (SW words each, contiguous at src) into a ring stage,
    as one run of 16-byte vectors (w_copy: the stage's word indices; words past n_tokens zero-filled)."""
    _copy_tile(stage, src + w_copy, w_copy < _copy_words(n_tokens, SW))


@gluon.jit
def copy_first_tiles(ring, RW0: gl.constexpr, N: gl.constexpr, start, end, bt_row, head_base, block_size, stride_cb,
                      stride_cs, w_copy, SW: gl.constexpr, STAGE_WORDS: gl.constexpr):
    """cp.async of the split's first N tiles into ring stages 0 .. N - 1 (stage 0 at word RW0 of ``ring``),
    a commit group each."""
    for k in gl.static_range(N):
        tk = start + k * TILE
        src = tile_source(tk, end, bt_row, head_base, block_size, stride_cb, stride_cs)
        _copy_tile_words(ring.slice(RW0 + k * STAGE_WORDS, STAGE_WORDS), src, w_copy, end - tk, SW)
        async_copy.commit_group()


@gluon.jit
def copy_tile_to_row(ring, RW0: gl.constexpr, st, tn, end, src, w_copy, SW: gl.constexpr, STAGE_WORDS: gl.constexpr):
    """cp.async of the tile of tokens [tn, tn + 16) (its first word at src) into ring stage st (a runtime value),
    then its commit group: the ring's words seen as rows of STAGE_WORDS and the stage indexed as a row, one copy
    whatever the stage (no warp-uniform branch a stage)."""
    gl.static_assert(RW0 % STAGE_WORDS == 0)
    gl.static_assert(ring.shape[0] % STAGE_WORDS == 0)
    ROWS: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])  # a rank below the view's: Gluon's rule for index()
    rows = _reinterpret(ring, gl.int32, [ring.shape[0] // STAGE_WORDS, STAGE_WORDS], ROWS)
    _copy_tile_words(rows.index(RW0 // STAGE_WORDS + st), src, w_copy, end - tn, SW)
    async_copy.commit_group()
