"""Bit packing: hand-checked cases and round trips (SPEC.md, "Bit packing")."""

import numpy as np
import pytest

from turboquant.reference.pack import pack_bits, unpack_bits


def test_three_bit_codes_hand_checked():
    # Stream bits, LSB first: byte 0 = c0 (001) | c1 (010) << 3 | low 2 bits of c2 (11) << 6 = 0xD1;
    # byte 1 = top bit of c2 (0) | c3 (100) << 1 | c4 (101) << 4 | low bit of c5 (0) << 7 = 0x58;
    # byte 2 = top 2 bits of c5 (11) | c6 (111) << 2 | c7 (000) << 5 = 0x1F.
    codes = np.array([1, 2, 3, 4, 5, 6, 7, 0], np.uint8)
    value = sum(int(c) << (3 * i) for i, c in enumerate(codes))
    assert value == 0b000_111_110_101_100_011_010_001
    assert pack_bits(codes, 3).tolist() == [value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF]
    assert pack_bits(codes, 3).tolist() == [0xD1, 0x58, 0x1F]


def test_one_bit_lsb_first():
    assert pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 0]), 1).tolist() == [0x01]
    assert pack_bits(np.array([0, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [0x80]
    assert pack_bits(np.array([1, 1, 0, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0x0B, 0x01]  # tail zero-padded


def test_two_and_four_bit_hand_checked():
    assert pack_bits(np.array([3, 0, 1, 2]), 2).tolist() == [0b10_01_00_11]
    assert pack_bits(np.array([0xA, 0x5, 0xF]), 4).tolist() == [0x5A, 0x0F]


def test_three_bit_straddles_bytes():
    # code 2 (bits 6..8) straddles bytes 0 and 1: 0b111 at index 2 sets bits 6, 7 of byte 0 and bit 0 of byte 1
    assert pack_bits(np.array([0, 0, 7]), 3).tolist() == [0b1100_0000, 0b0000_0001]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("n", [1, 7, 8, 33, 128])
def test_round_trip(bits, n):
    codes = np.random.default_rng(bits * 1000 + n).integers(0, 1 << bits, (5, n)).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (5, (n * bits + 7) // 8)
    assert np.array_equal(unpack_bits(packed, bits, n), codes)


def test_bad_input():
    with pytest.raises(ValueError, match="bits=0"):
        pack_bits(np.zeros(4, np.uint8), 0)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 8\)"):
        pack_bits(np.array([8]), 3)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(np.zeros(2, np.uint8), 3, 8)
