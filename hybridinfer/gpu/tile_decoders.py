"""Triton device functions that decode a tile of a DeviceMatrix's fields (`weights.py`) and dot it with x: the
GEMV and gate_up kernels (`gemv_kernels.py`), S2 (`hot_ffn_kernels.py`) and S3 (`s3_kernels.py`) call them for each
loop step.

How a tile is decoded depends on the format:
- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (`weights.WORD_FORMATS`, quants interleaved at upload): a thread loads a block's
  quants as int32 words in one vector load, and x field by field in the same layout (W consecutive elements per
  field, one vector load). A field becomes a float exactly in two instructions: masked into the mantissa of a float
  whose exponent makes its lowest bit worth 1, OR'ed with that exponent (one LOP3), then the constant subtracted
  (one FADD); one FFMA multiplies it by x. Q5's fifth bits are first merged into two words of 5-bit bytes a word
  (`_five_bit_words`). d scales each word's sum of fields once; Q4_1's and Q5_1's m multiplies the block's sum of x,
  which each program computes once before its loop. The loops take whole tiles without masks; a partial one follows.
- Q4_K, Q5_K, Q6_K in the GEMV, gate_up and S2 (`_q4_k_row_dots`, `_q6_k_row_dots`): a super-block of each row a
  loop step, its quants loaded as int32 words in the file's order (a word's low and high nibbles are two runs of 4
  consecutive elements), x as runs of consecutive floats split into the words' fields in registers; the fields
  decoded as above, each word's sums scaled once per sub-block.
- the other formats (F32/F16/BF16, and the K-quants in S3): each element decoded from its own block's fields.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..model_file import weight_formats

# the formats' kernel codes as Triton constexprs: compiled, a kernel may read only globals made with tl.constexpr (a
# plain int global passes under TRITON_INTERPRET=1 but fails to compile)
_BF16 = tl.constexpr(weight_formats.BF16.code)
_Q8_0 = tl.constexpr(weight_formats.Q8_0.code)
_Q4_0 = tl.constexpr(weight_formats.Q4_0.code)
_Q4_1 = tl.constexpr(weight_formats.Q4_1.code)
_Q5_0 = tl.constexpr(weight_formats.Q5_0.code)
_Q5_1 = tl.constexpr(weight_formats.Q5_1.code)
_Q4_K = tl.constexpr(weight_formats.Q4_K.code)
_Q5_K = tl.constexpr(weight_formats.Q5_K.code)
_Q6_K = tl.constexpr(weight_formats.Q6_K.code)
WORD_UNITS = tl.constexpr(8)  # 4-word units a GEMV/S2 loop step takes in the word formats (`_word_row_dots`)
_NIBBLES = tl.constexpr(0x0F0F0F0F)  # the low nibble of each byte
_ABOVE_NIBBLES = tl.constexpr(~0x0F0F0F0F)  # the high nibble of each byte, as an int32


@triton.jit
def _nibble(words, P: tl.constexpr, OFFSET: tl.constexpr, low_bits):
    """float32 value of nibble P (bits 4P..4P+3) of each int32 word, minus OFFSET, exactly: the nibble (at most bit
    15, after a shift by 16 for P >= 4) is masked into the mantissa of a float whose exponent makes its lowest bit
    worth 1, 2^(23 - SHIFT) + q, from which the constant is subtracted. low_bits: 15, a run-time value so that the
    compiler keeps the masks in registers (an instruction takes one immediate) and does not turn them into
    bit-field extracts; 31 or 63 (an even P): the 5 or 6 low bits of byte P / 2 (`_byte_dots`)."""
    SHIFT: tl.constexpr = 4 * (P % 4)
    if P >= 4:
        words = words >> 16
    bits = (words & (low_bits << SHIFT)) | ((150 - SHIFT) << 23)
    return bits.to(tl.float32, bitcast=True) - ((1 << (23 - SHIFT)) + OFFSET)


@triton.jit
def _byte(words, P: tl.constexpr, low_bits):
    """float32 value of signed byte P of each int32 word, exactly. Bytes 0 and 1 as `_nibble` does (low_bits: 255),
    with the byte's sign bit flipped in the same logic instruction (q + 128) and 128 subtracted with the magic;
    bytes 2 and 3 by one byte-selecting int8 -> float conversion each (I2F.S8 .B2/.B3 on sm_90), so that half the
    bytes go through the conversion unit and none needs a shift."""
    if P >= 2:
        v = (words >> (8 * P)).to(tl.int8).to(tl.float32)
    else:
        SHIFT: tl.constexpr = 8 * P
        bits = (words & (low_bits << SHIFT)) ^ ((128 << SHIFT) | ((150 - SHIFT) << 23))
        v = bits.to(tl.float32, bitcast=True) - ((1 << (23 - SHIFT)) + 128)
    return v


@triton.jit
def _field(words, high_words, P: tl.constexpr, FMT: tl.constexpr, low_bits):
    """float32 quant of field P of each interleaved word (`weights.py`): Q8_0 q, Q4_0 q - 8, Q4_1 q, Q5_0 q - 16, Q5_1
    q. Q5: words and high_words are `_five_bit_words`' low and high words (the others: high_words unused)."""
    if FMT == _Q8_0:
        v = _byte(words, P, low_bits)
    elif FMT == _Q4_0:
        v = _nibble(words, P, 8, low_bits)
    elif FMT == _Q4_1:
        v = _nibble(words, P, 0, low_bits)
    else:
        OFFSET: tl.constexpr = 16 if FMT == _Q5_0 else 0
        if P % 2 == 0:  # byte P / 2 of the low words: at bit 4 P, as nibble P is in a Q4 word
            v = _nibble(words, P, OFFSET, low_bits)
        else:
            v = _nibble(high_words, P - 1, OFFSET, low_bits)
    return v


@triton.jit
def _five_bit_words(words, qh):
    """(low, high) int32 words of 5-bit bytes for Q5_0/Q5_1: words (.., 4) a block's interleaved quants (nibble p of
    word i is element 4 p + i), qh (.., 1) its fifth bits (bit e: element e's). Byte k of word i's low word is field
    2 k (element 8 k + i), of its high word field 2 k + 1 (element 8 k + 4 + i): the nibble under 0x0F0F0F0F, and
    qh shifted so that the element's fifth bit lands on bit 4 of the byte (qh << 4 - i, qh >> i). The shift's other
    bits land under the nibble mask (not taken) or on bits 5..7 of a byte, which `_nibble`'s low_bits (31) drop."""
    i = tl.arange(0, 4)[None, None, :]
    low = (words & _NIBBLES) | ((qh << (4 - i)) & _ABOVE_NIBBLES)
    high = ((words >> 4) & _NIBBLES) | ((qh >> i) & _ABOVE_NIBBLES)
    return low, high


@triton.jit
def _per_unit(per_block, BLOCK_R: tl.constexpr, U: tl.constexpr):
    """(BLOCK_R, WORD_UNITS, 1): a (BLOCK_R, WORD_UNITS // U) tile of per-block values (d, m) repeated for each of
    a block's U units."""
    if U == 2:
        per_block = tl.reshape(tl.join(per_block, per_block), [BLOCK_R, WORD_UNITS])
    return per_block[:, :, None]


@triton.jit
def _word_tile(q_ptr, d_ptr, m_ptr, h_ptr, x_ptr, g_ptr, x_sums, r, n_units, u0, u_last, low_bits, acc, acc_m,
               FMT: tl.constexpr, TAIL: tl.constexpr, BLOCK_R: tl.constexpr, NORM: tl.constexpr):
    """(acc, acc_m) plus W[r, the tile of units from u0] . x for a word format (`_word_row_dots`): acc (BLOCK_R,
    WORD_UNITS, 4) float32 each word's fields . x times d, acc_m (BLOCK_R, WORD_UNITS, 1) Q4_1's or Q5_1's m times
    the unit's sum of x (x_sums[u]), so that every tensor keeps the words' layout. A row's words and scales are each
    loaded as one contiguous run: the compiler then lays rows across threads (several a thread), and a thread's x
    serves all its rows, with Triton 3.6 as with 3.9 (a tie in contiguity across the dimensions is broken one way by
    3.6, the other by 3.9). Q5: the qh words at h_ptr. TAIL: units at or past u_last give 0 (d = m = 0 there, x of
    the last unit). No other load is masked or filled. NORM: x times the norm weight g_ptr (same offsets) as it is
    loaded (`_gemv_kernel`'s RMSNorm prologue)."""
    U: tl.constexpr = 2 if FMT == _Q8_0 else 1  # 4-word units per block
    u = u0 + tl.arange(0, WORD_UNITS)
    k = u0 * 4 + tl.arange(0, WORD_UNITS * 4)  # the tile's words in a row
    b = u0 // U + tl.arange(0, WORD_UNITS // U)  # its blocks
    words = _tile_load(q_ptr + r[:, None] * (n_units * 4) + k[None, :], (k < u_last * 4)[None, :] & (r >= 0)[:, None],
                       TAIL)
    block = r[:, None] * (n_units // U) + b[None, :]
    in_tile = (b < u_last // U)[None, :] & (r >= 0)[:, None]
    d = _tile_load(d_ptr + block, in_tile, TAIL)
    x_unit = tl.minimum(u, u_last - 1) if TAIL else u
    words = tl.reshape(words, [BLOCK_R, WORD_UNITS, 4])
    high_words = words
    if FMT == _Q5_0 or FMT == _Q5_1:  # a block a unit
        words, high_words = _five_bit_words(words, _tile_load(h_ptr + block, in_tile, TAIL)[:, :, None])
    x_offsets = ((x_unit // U) * 32 + (x_unit % U) * 4)[None, :, None] + tl.arange(0, 4)[None, None, :]
    dot = tl.zeros([BLOCK_R, WORD_UNITS, 4], dtype=tl.float32)
    for p in tl.static_range(8 // U):
        x = tl.load(x_ptr + x_offsets + p * 4 * U)
        if NORM:
            x = x * tl.load(g_ptr + x_offsets + p * 4 * U)
        dot += _field(words, high_words, p, FMT, low_bits) * x
    acc += _per_unit(d.to(tl.float32), BLOCK_R, U) * dot
    if FMT == _Q4_1 or FMT == _Q5_1:
        m = _tile_load(m_ptr + block, in_tile, TAIL)
        acc_m += _per_unit(m.to(tl.float32), BLOCK_R, U) * tl.load(x_sums + x_unit)[None, :, None]
    return acc, acc_m


@triton.jit
def _tile_load(at, live, TAIL: tl.constexpr):
    """tl.load(at): in a TAIL tile masked by live (0 elsewhere), in a whole tile unmasked (no predicate to test)."""
    if TAIL:
        value = tl.load(at, mask=live, other=0)
    else:
        value = tl.load(at)
    return value


@triton.jit
def _word_row_dots(q_ptr, d_ptr, m_ptr, h_ptr, x_ptr, g_ptr, x_sums, r, cols, c_first, c_last, low_bits,
                   FMT: tl.constexpr, BLOCK_R: tl.constexpr, NORM: tl.constexpr):
    """(BLOCK_R,) float32: W[r, c_first:c_last] . x[c_first:c_last] for a word format (q_ptr: int32 words), rows r
    (BLOCK_R,) int32, all valid rows; c_first, c_last multiples of 32. A thread takes 4-word units (a Q4 or Q5
    block, half a Q8_0 one: element 4 U p + 4 h + i is field p of word i of unit h of its block, U units a block):
    whole tiles of WORD_UNITS units in the loop, the rest in one masked tile after it. x_sums: Q4_1's or Q5_1's sums
    of x per block (`_block_x_sums`), indexed by block."""
    U: tl.constexpr = 2 if FMT == _Q8_0 else 1
    n_units = cols // 32 * U
    u_first = c_first // 32 * U
    u_last = c_last // 32 * U
    whole = u_first + (u_last - u_first) // WORD_UNITS * WORD_UNITS
    acc = tl.zeros([BLOCK_R, WORD_UNITS, 4], dtype=tl.float32)
    acc_m = tl.zeros([BLOCK_R, WORD_UNITS, 1], dtype=tl.float32)
    for u0 in range(u_first, whole, WORD_UNITS):
        acc, acc_m = _word_tile(q_ptr, d_ptr, m_ptr, h_ptr, x_ptr, g_ptr, x_sums, r, n_units, u0, u_last, low_bits,
                                acc, acc_m, FMT, False, BLOCK_R, NORM)
    if whole < u_last:
        acc, acc_m = _word_tile(q_ptr, d_ptr, m_ptr, h_ptr, x_ptr, g_ptr, x_sums, r, n_units, whole, u_last,
                                low_bits, acc, acc_m, FMT, True, BLOCK_R, NORM)
    return tl.sum(tl.sum(acc, axis=2) + tl.sum(acc_m, axis=2), axis=1)


@triton.jit
def _q4_k_row_dots(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_ptr, g_ptr, r, live, cols, c_first, c_last, low_bits,
                   FIVE: tl.constexpr, BLOCK_R: tl.constexpr, NORM: tl.constexpr):
    """(BLOCK_R,) float32: W[r, c_first:c_last] . x[c_first:c_last] for Q4_K (FIVE: Q5_K), rows r (BLOCK_R,) int32
    (only the live ones read), c_first and c_last multiples of 256: a loop step takes a super-block of every row as
    int32 words of quants (BLOCK_R, 4, 8): word i of 32-byte chunk k holds elements 64 k + 4 i + p of sub-block 2 k
    in the low nibbles of its bytes p, and 64 k + 32 + 4 i + p of sub-block 2 k + 1 in the high ones (Q5_K: their
    fifth bits are bits 2 k and 2 k + 1 of byte p of qh word i, merged a word at a time), so x is read as two runs
    of 32 consecutive floats per chunk, split into its four fields in registers. Each word's two sums of fields
    times x are scaled once by d * sc of their sub-blocks; the mins by dmin * m times the sums of those x."""
    k = tl.arange(0, 4)[None, :, None]
    i = tl.arange(0, 8)[None, None, :]
    p = tl.arange(0, 4)[None, None, None, :]
    rows = r.to(tl.int64)[:, None, None]
    ok = live[:, None, None]
    words_ptr = q_ptr.to(tl.pointer_type(tl.int32)) + rows * (cols // 8) + k * 8 + i  # + 32 a super-block
    qh_ptr = h_ptr.to(tl.pointer_type(tl.int32)) + rows * (cols // 32) + i  # Q5_K: + 8 a super-block
    acc = tl.zeros([BLOCK_R, 4, 8], dtype=tl.float32)
    for c0 in range(c_first, c_last, 256):
        block = rows * (cols // 256) + c0 // 256  # (BLOCK_R, 1, 1)
        words = tl.load(words_ptr + c0 // 8, mask=ok, other=0)
        at = c0 + 64 * k[:, :, :, None] + 4 * i[:, :, :, None] + p  # (1, 4, 8, 4): the low nibbles' x
        x0, x1, x2, x3 = _x_fields(x_ptr, g_ptr, at, 4, 8, NORM)
        y0, y1, y2, y3 = _x_fields(x_ptr, g_ptr, at + 32, 4, 8, NORM)
        if FIVE:
            qh = tl.load(qh_ptr + c0 // 32, mask=ok, other=0) >> (2 * k)  # byte p: bit 0 low's, bit 1 high's
            low_words = (words & _NIBBLES) | ((qh << 4) & 0x10101010)
            high_words = ((words >> 4) & _NIBBLES) | ((qh << 3) & 0x10101010)
            low = _byte_dots(low_words, x0, x1, x2, x3, 0, low_bits)
            high = _byte_dots(high_words, y0, y1, y2, y3, 0, low_bits)
        else:
            low = (_nibble(words, 0, 0, low_bits) * x0 + _nibble(words, 2, 0, low_bits) * x1
                   + _nibble(words, 4, 0, low_bits) * x2 + _nibble(words, 6, 0, low_bits) * x3)
            high = (_nibble(words, 1, 0, low_bits) * y0 + _nibble(words, 3, 0, low_bits) * y1
                    + _nibble(words, 5, 0, low_bits) * y2 + _nibble(words, 7, 0, low_bits) * y3)
        d = tl.load(d_ptr + block, mask=ok, other=0).to(tl.float32)
        dmin = tl.load(m_ptr + block, mask=ok, other=0).to(tl.float32)
        scales = s_ptr + block * 12
        sc_low, m_low = _q4_k_pair(scales, 2 * k, ok)
        sc_high, m_high = _q4_k_pair(scales, 2 * k + 1, ok)
        acc += (d * sc_low) * low + (d * sc_high) * high - (dmin * m_low) * (x0 + x1 + x2 + x3) \
            - (dmin * m_high) * (y0 + y1 + y2 + y3)
    return tl.sum(tl.sum(acc, axis=2), axis=1)


@triton.jit
def _byte_dots(words, x0, x1, x2, x3, OFFSET: tl.constexpr, low_bits):
    """sum over the bytes p of each word of xp times the low bits of byte p (low_bits: 31 or 63, a Q5_K or Q6_K
    quant's 5 or 6 bits) minus OFFSET: `_nibble`'s field 2p with the wider mask."""
    return (_nibble(words, 0, OFFSET, low_bits) * x0 + _nibble(words, 2, OFFSET, low_bits) * x1
            + _nibble(words, 4, OFFSET, low_bits) * x2 + _nibble(words, 6, OFFSET, low_bits) * x3)


@triton.jit
def _x_fields(x_ptr, g_ptr, at, A: tl.constexpr, B: tl.constexpr, NORM: tl.constexpr):
    """x[at] (1, A, B, 4) (times the norm weight g_ptr's if NORM) as its four fields x[at][..., p], each (1, A, B):
    loaded as runs of consecutive floats, split in registers."""
    x = tl.load(x_ptr + at)
    if NORM:
        x = x * tl.load(g_ptr + at)
    a, b = tl.split(tl.reshape(x, [1, A, B, 2, 2]))  # p = 2 p1 + p0: p0 = 0, 1
    x0, x2 = tl.split(a)
    x1, x3 = tl.split(b)
    return x0, x1, x2, x3


@triton.jit
def _q6_k_row_dots(q_ptr, d_ptr, h_ptr, s_ptr, x_ptr, g_ptr, r, live, cols, c_first, c_last, low_bits,
                   BLOCK_R: tl.constexpr, NORM: tl.constexpr):
    """`_q4_k_row_dots` for Q6_K: a loop step takes a super-block of every row, its low bits as int32 words
    (BLOCK_R, 2, 16): word j of half h holds elements 128 h + 4 j + p in the low nibbles of its bytes p and 128 h +
    64 + 4 j + p in the high ones; their top 2 bits are in qh word 8 h + j % 8, bits 2 (j // 8) of byte p (4 higher
    for the high nibbles). The two are merged a word at a time into words of 6-bit fields; each word's two sums of
    fields times x are scaled by d * sc of their 16 elements."""
    h = tl.arange(0, 2)[None, :, None]
    j = tl.arange(0, 16)[None, None, :]
    rows = r.to(tl.int64)[:, None, None]
    ok = live[:, None, None]
    n_blocks = cols // 256
    ql_ptr = q_ptr.to(tl.pointer_type(tl.int32)) + rows * (cols // 8) + h * 16 + j  # + 32 a super-block
    qh_ptr = h_ptr.to(tl.pointer_type(tl.int32)) + rows * (n_blocks * 16) + h * 8 + j % 8  # + 16 a super-block
    sc_ptr = s_ptr + rows * (n_blocks * 16) + h * 8 + j // 4  # the low fields' scale; + 4: the high ones'
    acc = tl.zeros([BLOCK_R, 2, 16], dtype=tl.float32)
    for c0 in range(c_first, c_last, 256):
        b = c0 // 256
        ql = tl.load(ql_ptr + b * 32, mask=ok, other=0)
        qh = tl.load(qh_ptr + b * 16, mask=ok, other=0) >> (2 * (j // 8))
        low = (ql & _NIBBLES) | ((qh << 4) & 0x30303030)  # byte p: the low field's 6 bits
        high = ((ql >> 4) & _NIBBLES) | (qh & 0x30303030)
        at = c0 + 128 * h[:, :, :, None] + 4 * j[:, :, :, None] + tl.arange(0, 4)[None, None, None, :]  # (1, 2, 16, 4)
        x0, x1, x2, x3 = _x_fields(x_ptr, g_ptr, at, 2, 16, NORM)
        y0, y1, y2, y3 = _x_fields(x_ptr, g_ptr, at + 64, 2, 16, NORM)
        dot_low = _byte_dots(low, x0, x1, x2, x3, 32, low_bits)
        dot_high = _byte_dots(high, y0, y1, y2, y3, 32, low_bits)
        d = tl.load(d_ptr + rows * n_blocks + b, mask=ok, other=0).to(tl.float32)
        sc_low = tl.load(sc_ptr + b * 16, mask=ok, other=0).to(tl.float32)
        sc_high = tl.load(sc_ptr + b * 16 + 4, mask=ok, other=0).to(tl.float32)
        acc += d * (sc_low * dot_low + sc_high * dot_high)
    return tl.sum(tl.sum(acc, axis=2), axis=1)


@triton.jit
def _q4_k_pair(scales, sub, ok):
    """float32 (scale, min) of sub-blocks `sub` (1, 4, 1) of the super-blocks whose 12 scale bytes are at `scales`
    (BLOCK_R, 1, 1), as `_super_block_weights` decodes them."""
    b0 = tl.load(scales + sub % 4, mask=ok, other=0).to(tl.int32)
    b1 = tl.load(scales + sub % 4 + 4, mask=ok, other=0).to(tl.int32)
    b2 = tl.load(scales + sub % 4 + 8, mask=ok, other=0).to(tl.int32)
    sc = tl.where(sub < 4, b0 & 63, (b2 & 15) | ((b0 >> 2) & 48))
    mn = tl.where(sub < 4, b1 & 63, (b2 >> 4) | ((b1 >> 2) & 48))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _block_x_sums(x_ptr, g_ptr, sums, staged, b_first, b_last, STAGE: tl.constexpr):
    """sums[b] = x[32 b : 32 b + 32].sum() for the blocks b in [b_first, b_last) (`sums` indexed by block: the
    caller's scratch minus b_first); the caller waits (tl.debug_barrier) before reading them. Q4_1's m term needs
    them: computed once per program here rather than by every thread that reads a block. STAGE: of x times the norm
    weight g_ptr, which is also stored to staged (indexed by column) for the loop to read."""
    for b0 in range(b_first, b_last, 64):
        b = b0 + tl.arange(0, 64)
        at = b[:, None] * 32 + tl.arange(0, 32)[None, :]
        x = tl.load(x_ptr + at, mask=(b < b_last)[:, None], other=0)
        if STAGE:
            x = x * tl.load(g_ptr + at, mask=(b < b_last)[:, None], other=0)
            tl.store(staged + at, x, mask=(b < b_last)[:, None])
        tl.store(sums + b, tl.sum(x, axis=1), mask=b < b_last)


@triton.jit
def _block_sums_prologue(x_ptr, g_ptr, sums_ptr, c_first, c_last, cols_per_split, STAGE: tl.constexpr):
    """(the x the loop reads, Q4_1's or Q5_1's sums of it per block) of a GEMV or gate_up program whose columns
    are [c_first, c_last), from its own rows of the scratch `_x_scratch` allocates: sums_ptr (programs,
    cols_per_split / 32); with STAGE (an RMSNorm prologue) (programs, cols_per_split) first, where x times the norm
    weight is staged so that the loop does not multiply it again for every 4 rows (Q4_1's loop has no instruction to
    spare)."""
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    n_blocks = cols_per_split // 32
    x_read = x_ptr
    staged = sums_ptr + program * cols_per_split - c_first  # indexed by column (used with STAGE only)
    x_sums = sums_ptr + program * n_blocks - c_first // 32
    if STAGE:
        x_read = staged
        x_sums += tl.num_programs(0) * tl.num_programs(1) * cols_per_split
    _block_x_sums(x_ptr, g_ptr, x_sums, staged, c_first // 32, c_last // 32, STAGE)
    tl.debug_barrier()
    return x_read, x_sums


@triton.jit
def _weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r, c, live, cols, FMT: tl.constexpr):
    """float32 tile W[r, c] (r (R, 1) int64 rows, c (1, C) columns, live (R, C) which to load; 0 elsewhere) of a
    format other than the word formats, reading the DeviceMatrix fields (`weights.py`) q_ptr = values (float formats)
    or quants, d_ptr = scales, m_ptr = mins, h_ptr = highs, s_ptr = sub_scales; FMT is the format's code."""
    if FMT <= _BF16:  # the float formats
        w = tl.load(q_ptr + r * cols + c, mask=live, other=0).to(tl.float32)
    else:
        w = _super_block_weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r, c, live, cols, FMT)
    return w


@triton.jit
def _super_block_weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r, c, live, cols, FMT: tl.constexpr):
    """`_weights` for the K-quants (Q4_K, Q5_K, Q6_K): 256-element super-blocks, element e = c % 256 of block
    `block`, as `weights.py`'s module doc lays them out."""
    block = r * (cols // 256) + c // 256
    e = c % 256
    d = tl.load(d_ptr + block, mask=live, other=0).to(tl.float32)
    if FMT == _Q6_K:
        h, i = e // 128, e % 128
        low = tl.load(q_ptr + block * 128 + h * 64 + i % 64, mask=live, other=0).to(tl.int32)
        top = tl.load(h_ptr + block * 64 + h * 32 + i % 32, mask=live, other=0).to(tl.int32)
        q = ((low >> (4 * (i // 64))) & 15) | (((top >> (2 * (i // 32))) & 3) << 4)
        sc = tl.load(s_ptr + block * 16 + e // 16, mask=live, other=0).to(tl.float32)
        w = (d * sc) * (q - 32).to(tl.float32)
    else:
        s = e // 32  # the sub-block: its 6-bit (sc, m) from bytes s % 4, s % 4 + 4 and s % 4 + 8 of the 12
        packed = s_ptr + block * 12 + s % 4
        b0 = tl.load(packed, mask=live, other=0).to(tl.int32)
        b1 = tl.load(packed + 4, mask=live, other=0).to(tl.int32)
        b2 = tl.load(packed + 8, mask=live, other=0).to(tl.int32)
        sc = tl.where(s < 4, b0 & 63, (b2 & 15) | ((b0 >> 2) & 48))
        mn = tl.where(s < 4, b1 & 63, (b2 >> 4) | ((b1 >> 2) & 48))
        byte = tl.load(q_ptr + block * 128 + (e // 64) * 32 + e % 32, mask=live, other=0).to(tl.int32)
        q = tl.where(s % 2 == 1, byte >> 4, byte & 15)
        if FMT == _Q5_K:  # bit s of qh byte e % 32
            q += ((tl.load(h_ptr + block * 32 + e % 32, mask=live, other=0).to(tl.int32) >> s) & 1) * 16
        dmin = tl.load(m_ptr + block, mask=live, other=0).to(tl.float32)
        w = (d * sc.to(tl.float32)) * q.to(tl.float32) - dmin * mn.to(tl.float32)
    return w


@triton.jit
def _row_dots(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_ptr, g_ptr, x_sums, r, live, cols, c_first, c_last, low_bits,
              FMT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, NORM: tl.constexpr):
    """(BLOCK_R,) float32: W[r, c_first:c_last] . x[c_first:c_last] for the rows r (BLOCK_R,) int32, all valid
    rows; the results for rows not live are garbage, to be discarded (the word formats read every row r: a caller
    that must not read a row points it at one it reads; the other formats read only the live rows); c_first, c_last
    multiples of the format's tile_columns (c_last: or cols); low_bits: `low_bits(FMT)`. NORM: x[c] times the norm
    weight g_ptr[c] (the RMSNorm prologue: the inverse RMS is the caller's, applied to the dot)."""
    if FMT == _Q4_0 or FMT == _Q4_1 or FMT == _Q5_0 or FMT == _Q5_1 or FMT == _Q8_0:  # int32 offsets (`_fields`)
        out = _word_row_dots(q_ptr, d_ptr, m_ptr, h_ptr, x_ptr, g_ptr, x_sums, r, cols, c_first, c_last, low_bits,
                             FMT, BLOCK_R, NORM)
    elif FMT == _Q4_K or FMT == _Q5_K:
        out = _q4_k_row_dots(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, x_ptr, g_ptr, r, live, cols, c_first, c_last,
                             low_bits, FMT == _Q5_K, BLOCK_R, NORM)
    elif FMT == _Q6_K:
        out = _q6_k_row_dots(q_ptr, d_ptr, h_ptr, s_ptr, x_ptr, g_ptr, r, live, cols, c_first, c_last, low_bits,
                             BLOCK_R, NORM)
    else:
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        for c0 in range(c_first, c_last, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            in_range = c < c_last
            x = tl.load(x_ptr + c, mask=in_range, other=0).to(tl.float32)
            if NORM:
                x = x * tl.load(g_ptr + c, mask=in_range, other=0)
            w = _weights(q_ptr, d_ptr, m_ptr, h_ptr, s_ptr, r.to(tl.int64)[:, None], c[None, :],
                         live[:, None] & in_range[None, :], cols, FMT)
            acc += w * x[None, :]
        out = tl.sum(acc, axis=1)
    return out
