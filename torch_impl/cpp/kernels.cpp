// TurboQuant fused CPU kernels (SPEC.md), a torch C++ extension built at first use by
// torch_impl/cpp/__init__.py.  The Python side (torch_impl/fused.py) does the rotations as torch
// matmuls and passes every field offset and table; nothing of the format is derived here.
//
// tq_decode: attention of one query row per sequence (a decode step) over the packed paged cache
//   cache uint8 [num_blocks, num_kv_heads, block_size, slot_bytes] (bytes of a slot contiguous),
//   block_table int64 [num_seqs, max_blocks], seq_lens int64 [num_seqs] (the row sees tokens 0..len-1),
//   q_rot float [num_seqs, num_q_heads, MK]: Pi_i q_{C_i} of each key instance i, concatenated,
//   q_sgn float [num_seqs, num_q_heads, MS]: S_i Pi_i q_{C_i} of each QJL key instance (MS may be 0).
//   Parallel split: one task per (sequence, KV head) (at::parallel_for, OpenMP).  A task streams its
//   slots once, block by block: each token's codes are unpacked and mapped to centroid values times
//   the token's norm (AVX-512: 16 codes per table permute, AVX2: 8; elsewhere a scalar loop), scored against the
//   G = num_q_heads / num_kv_heads rows of the GQA group, folded into an online softmax, and the value
//   centroids times their norms are summed with the probabilities in the rotated domain.
//   out float [num_seqs, num_q_heads, MV]: that sum over the softmax denominator (value mode mse; the
//   caller applies Pi_i^T per row) or the output itself (value mode group, MV = head_size).
//   A NaN norm, gamma or group scale/zero (a non-finite token, SPEC 8) makes exactly the rows that see
//   the token NaN; a NaN or +Inf score (NaN query) makes its row NaN.
//
// tq_dense: the dense workspace (K', V') of SPEC 9's dense prefill for one sequence's tokens.
// tq_store_prep: norms and unit vectors (SPEC 4.1) of each instance of K (and V) rows; the caller
//   rotates them (y = u Pi^T, one matmul per instance).
// tq_store_encode: codes against the codebook boundaries, LSB-first packing, QJL signs and gamma,
//   group-mode scale/zero/codes and NaN encodings, written as whole slots (padding bytes 0) at
//   cache[slot // block_size, head, slot % block_size] for slot_mapping >= 0; a slot out of range or
//   repeated raises ValueError before anything is written.
//   Parallel split: rows (token, KV head).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr int LUT = 16;  // centroid / boundary tables are padded to 16 entries
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
constexpr float POS_INF = std::numeric_limits<float>::infinity();

struct KeyInst {
  int m, bits, norm_off, codes_off, rnorm_off, signs_off, qoff, soff;
  float qjl_scale;
  const float* cent;
};
struct ValInst {
  int m, bits, norm_off, codes_off, off;
  const float* cent;
};
struct GroupVals {
  int gs, bits, scale_off, zero_off, codes_off;
};

inline float ld_f32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}

inline float ld_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

// The BITS bytes holding 8 codes of BITS bits, as a little-endian word (byte loads: a 3-byte memcpy into
// a word goes through the stack and stalls on store forwarding).
template <int BITS>
inline uint32_t load_word(const uint8_t* p) {
  uint32_t w = p[0];
  if (BITS > 1) w |= static_cast<uint32_t>(p[1]) << 8;
  if (BITS > 2) w |= static_cast<uint32_t>(p[2]) << 16;
  if (BITS > 3) w |= static_cast<uint32_t>(p[3]) << 24;
  return w;
}

#if defined(__AVX2__)
// 8 codes of BITS bits (exactly BITS bytes) -> their table values: lo = table[0..7], hi = table[8..15].
template <int BITS>
inline __m256 lut8(const uint8_t* p, __m256 lo, __m256 hi) {
  const uint32_t w = load_word<BITS>(p);
  const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
  __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), shifts),
                                 _mm256_set1_epi32((1 << BITS) - 1));
  __m256 a = _mm256_permutevar8x32_ps(lo, idx);
  if (BITS < 4) return a;
  __m256 b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign bit
}
#endif

#if defined(__AVX512F__)
// 16 codes of BITS bits (bits 0 .. 16*BITS-1 of w) -> their table values (16 entries).
template <int BITS>
inline __m512 lut16(uint64_t w, __m512 table) {
  const __m512i shifts = _mm512_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS, 0,
                                           BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
  const __m256i lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(w)));
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(w >> (8 * BITS))));
  const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  const __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(v, shifts), _mm512_set1_epi32((1 << BITS) - 1));
  return _mm512_permutexvar_ps(idx, table);
}
#endif

// n <= 8 bytes at p as a little-endian word (byte loads: never reads past p + n).
inline uint64_t load_exact(const uint8_t* p, int n) {
  uint64_t w = 0;
  for (int i = 0; i < n; ++i) w |= static_cast<uint64_t>(p[i]) << (8 * i);
  return w;
}

// out[c] = table[code c] * mul for the m codes of a packed field (SPEC 5).  Groups of 8 codes are
// exactly BITS bytes; a word load may read past a group's bytes only while they stay inside the field.
template <int BITS>
inline void lookup_codes(const uint8_t* p, int m, const float* table, float mul, float* out) {
  constexpr uint32_t mask = (1u << BITS) - 1;
  const int nbytes = (m * BITS + 7) / 8;
  int c = 0;
#if defined(__AVX512F__)
  {
    const __m512 t = _mm512_mul_ps(_mm512_loadu_ps(table), _mm512_set1_ps(mul));
    for (; c + 16 <= m; c += 16) {
      const uint8_t* q = p + c / 8 * BITS;
      uint64_t w;
      if (q + 8 <= p + nbytes) std::memcpy(&w, q, 8);
      else w = load_exact(q, 2 * BITS);
      _mm512_storeu_ps(out + c, lut16<BITS>(w, t));
    }
  }
#endif
#if defined(__AVX2__)
  {
    const __m256 vm = _mm256_set1_ps(mul);
    const __m256 lo = _mm256_mul_ps(_mm256_loadu_ps(table), vm), hi = _mm256_mul_ps(_mm256_loadu_ps(table + 8), vm);
    for (; c + 8 <= m; c += 8) _mm256_storeu_ps(out + c, lut8<BITS>(p + c / 8 * BITS, lo, hi));
  }
#endif
  for (; c + 8 <= m; c += 8) {
    const uint32_t w = load_word<BITS>(p + c / 8 * BITS);
    for (int i = 0; i < 8; ++i) out[c + i] = table[(w >> (BITS * i)) & mask] * mul;
  }
  for (; c < m; ++c) {
    const int bit = c * BITS, byte = bit >> 3;
    uint32_t v = p[byte];
    if (byte + 1 < nbytes) v |= static_cast<uint32_t>(p[byte + 1]) << 8;
    out[c] = table[(v >> (bit & 7)) & mask] * mul;
  }
}

inline void lookup(const uint8_t* p, int bits, int m, const float* table, float mul, float* out) {
  switch (bits) {
    case 1: lookup_codes<1>(p, m, table, mul, out); break;
    case 2: lookup_codes<2>(p, m, table, mul, out); break;
    case 3: lookup_codes<3>(p, m, table, mul, out); break;
    default: lookup_codes<4>(p, m, table, mul, out); break;
  }
}

#if defined(__AVX512F__)
inline float hsum(__m512 v) {  // a shuffle tree (GCC's _mm512_reduce_add_ps adds 16 scalars in a chain)
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
}
#endif

inline float dot(const float* a, const float* b, int n) {
  float s = 0.f;
  int i = 0;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];  // a tail of < 16 (an OpenMP simd reduction's epilogue costs more)
#else
#pragma omp simd reduction(+ : s)
  for (int j = 0; j < n; ++j) s += a[j] * b[j];
#endif
  return s;
}

// acc[r][:] += sum_j w[r * wstride + j] * v[j][:] for R rows (a block's probabilities times its
// decoded values, v [n][mv]): with AVX-512 the R accumulators of 16 columns stay in registers over the
// block's tokens.
template <int R>
inline void accumulate_rows(const float* w, int64_t wstride, const float* v, int n, int mv, float* acc) {
  int c = 0;
#if defined(__AVX512F__)
  for (; c + 16 <= mv; c += 16) {
    __m512 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm512_loadu_ps(acc + r * mv + c);
    for (int j = 0; j < n; ++j) {
      const __m512 x = _mm512_loadu_ps(v + j * mv + c);
      for (int r = 0; r < R; ++r) a[r] = _mm512_fmadd_ps(_mm512_set1_ps(w[r * wstride + j]), x, a[r]);
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(acc + r * mv + c, a[r]);
  }
#endif
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < n; ++j) {
      const float wj = w[r * wstride + j];
      const float* x = v + j * mv;
      float* ar = acc + r * mv;
#pragma omp simd
      for (int cc = c; cc < mv; ++cc) ar[cc] += wj * x[cc];
    }
}

inline void accumulate(const float* w, int64_t wstride, int rows, const float* v, int n, int mv, float* acc) {
  switch (rows) {
    case 1: accumulate_rows<1>(w, wstride, v, n, mv, acc); break;
    case 2: accumulate_rows<2>(w, wstride, v, n, mv, acc); break;
    case 3: accumulate_rows<3>(w, wstride, v, n, mv, acc); break;
    default: accumulate_rows<4>(w, wstride, v, n, mv, acc); break;
  }
}

struct DecodeArgs {
  const uint8_t* cache;
  int64_t s0, s1, s2, block_size;
  const int64_t* block_table;
  int64_t max_blocks;
  const int64_t* seq_lens;
  const float* q_rot;
  const float* q_sgn;
  int64_t hq, hkv, mk, ms, mv;
  float scale;
  std::vector<KeyInst> keys;
  std::vector<ValInst> vals;
  bool group;
  GroupVals gv;
  const float* ident;  // 0..15 (group codes)
  float* out;
};

void decode_task(const DecodeArgs& a, int64_t b, int64_t h) {
  const int64_t G = a.hq / a.hkv, len = a.seq_lens[b], bs = a.block_size;
  const int mk = static_cast<int>(a.mk), ms = static_cast<int>(a.ms), mv = static_cast<int>(a.mv);
  const float* q = a.q_rot + (b * a.hq + h * G) * a.mk;
  const float* qs = a.ms ? a.q_sgn + (b * a.hq + h * G) * a.ms : nullptr;
  std::vector<float> kbuf(mk + 8), sbuf(ms + 8), vbuf(bs * mv + 8), acc(G * mv, 0.f), sc(G * bs);
  std::vector<float> mrun(G, NEG_INF), lsum(G, 0.f);
  std::vector<char> poison(G, 0);
  const int64_t nblk = (len + bs - 1) / bs;
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const uint8_t* base = a.cache + a.block_table[b * a.max_blocks + blk] * a.s0 + h * a.s1;
    const int64_t n = std::min(bs, len - blk * bs);
    for (int64_t j = 0; j < n; ++j) {  // scores
      const uint8_t* slot = base + j * a.s2;
      for (const KeyInst& k : a.keys) {
        const float norm = ld_f32(slot + k.norm_off);
        if (k.codes_off >= 0) lookup(slot + k.codes_off, k.bits, k.m, k.cent, norm, kbuf.data() + k.qoff);
        else std::fill(kbuf.begin() + k.qoff, kbuf.begin() + k.qoff + k.m, 0.f);
        if (k.signs_off >= 0) {
          static const float pm[LUT] = {-1.f, 1.f};
          lookup(slot + k.signs_off, 1, k.m, pm, norm * k.qjl_scale * ld_f32(slot + k.rnorm_off), sbuf.data() + k.soff);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float s = dot(q + g * mk, kbuf.data(), mk);
        if (ms) s += dot(qs + g * ms, sbuf.data(), ms);
        s *= a.scale;
        if (!(s < POS_INF)) {  // NaN (a non-finite key or query) or +Inf: the row is NaN
          poison[g] = 1;
          s = NEG_INF;
        }
        sc[g * bs + j] = s;
      }
    }
    for (int64_t g = 0; g < G; ++g) {  // online softmax
      float* sg = sc.data() + g * bs;
      float mx = mrun[g];
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, sg[j]);
      if (mx == NEG_INF) {
        for (int64_t j = 0; j < n; ++j) sg[j] = 0.f;
        continue;
      }
      if (mx > mrun[g]) {
        const float corr = std::exp(mrun[g] - mx);  // 0 at the first finite score
        lsum[g] *= corr;
        float* ag = acc.data() + g * mv;
        for (int c = 0; c < mv; ++c) ag[c] *= corr;
        mrun[g] = mx;
      }
      float l = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        sg[j] = std::exp(sg[j] - mx);
        l += sg[j];
      }
      lsum[g] += l;
    }
    for (int64_t j = 0; j < n; ++j) {  // values of the block, decoded into vbuf[j]
      const uint8_t* slot = base + j * a.s2;
      float* vj = vbuf.data() + j * mv;
      if (a.group) {
        const GroupVals& gv = a.gv;
        lookup(slot + gv.codes_off, gv.bits, mv, a.ident, 1.f, vj);
        for (int c0 = 0, k = 0; c0 < mv; c0 += gv.gs, ++k) {
          const float z = ld_f16(slot + gv.zero_off + 2 * k), s = ld_f16(slot + gv.scale_off + 2 * k);
          for (int c = c0; c < c0 + gv.gs; ++c) vj[c] = z + s * vj[c];
        }
      } else {
        for (const ValInst& v : a.vals)
          lookup(slot + v.codes_off, v.bits, v.m, v.cent, ld_f32(slot + v.norm_off), vj + v.off);
      }
    }
    for (int64_t g0 = 0; g0 < G; g0 += 4)  // acc[g] += sum_j p[g][j] vbuf[j], up to 4 rows per pass
      accumulate(sc.data() + g0 * bs, bs, static_cast<int>(std::min<int64_t>(4, G - g0)), vbuf.data(),
                 static_cast<int>(n), mv, acc.data() + g0 * mv);
  }
  for (int64_t g = 0; g < G; ++g) {
    float* o = a.out + (b * a.hq + h * G + g) * a.mv;
    const float inv = 1.f / lsum[g];
    const float* ag = acc.data() + g * mv;
    if (poison[g]) {
      for (int c = 0; c < mv; ++c) o[c] = std::numeric_limits<float>::quiet_NaN();
    } else {
      for (int c = 0; c < mv; ++c) o[c] = ag[c] * inv;
    }
  }
}

void check_cpu(const at::Tensor& t, const char* name, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dt, name, " has dtype ", t.scalar_type(), ", expected ", dt);
}

void check_contig(const at::Tensor& t, const char* name, at::ScalarType dt) {
  check_cpu(t, name, dt);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Instance descriptors (one row each, int64 [n, 8]): m, mse bits, norm_off, codes_off, rnorm_off,
// signs_off, off (in q_rot / y / out), soff (in q_sgn); -1: no such field.
// kqjl float [nk]: sqrt(pi/2)/m or 0; kcent float [nk, 16].  vdesc: the value instances' descriptors
// (mse values); vcent float [nv, 16].  gdesc int64 [5]: group_size, bits, scale_off, zero_off, codes_off
// (empty: value mode mse).
void tq_decode(const at::Tensor& cache, const at::Tensor& block_table, const at::Tensor& seq_lens,
               const at::Tensor& q_rot, const at::Tensor& q_sgn, const at::Tensor& kdesc, const at::Tensor& kqjl,
               const at::Tensor& kcent, const at::Tensor& vdesc, const at::Tensor& vcent, const at::Tensor& gdesc,
               double scale, at::Tensor out) {
  check_cpu(cache, "cache", at::kByte);
  TORCH_CHECK(cache.dim() == 4 && cache.stride(3) == 1, "cache must be [num_blocks, num_kv_heads, block_size, slot]");
  check_contig(block_table, "block_table", at::kLong);
  check_contig(seq_lens, "seq_lens", at::kLong);
  check_contig(q_rot, "q_rot", at::kFloat);
  check_contig(q_sgn, "q_sgn", at::kFloat);
  check_contig(kdesc, "kdesc", at::kLong);
  check_contig(kqjl, "kqjl", at::kFloat);
  check_contig(kcent, "kcent", at::kFloat);
  check_contig(vdesc, "vdesc", at::kLong);
  check_contig(vcent, "vcent", at::kFloat);
  check_contig(gdesc, "gdesc", at::kLong);
  check_contig(out, "out", at::kFloat);
  static const float ident[LUT] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  DecodeArgs a;
  a.cache = cache.data_ptr<uint8_t>();
  a.s0 = cache.stride(0);
  a.s1 = cache.stride(1);
  a.s2 = cache.stride(2);
  a.block_size = cache.size(2);
  a.block_table = block_table.data_ptr<int64_t>();
  a.max_blocks = block_table.size(1);
  a.seq_lens = seq_lens.data_ptr<int64_t>();
  a.q_rot = q_rot.data_ptr<float>();
  a.q_sgn = q_sgn.data_ptr<float>();
  a.hq = q_rot.size(1);
  a.hkv = cache.size(1);
  a.mk = q_rot.size(2);
  a.ms = q_sgn.numel() ? q_sgn.size(2) : 0;
  a.mv = out.size(2);
  a.scale = static_cast<float>(scale);
  a.ident = ident;
  a.out = out.data_ptr<float>();
  const int64_t* kd = kdesc.data_ptr<int64_t>();
  for (int64_t i = 0; i < kdesc.size(0); ++i, kd += 8)
    a.keys.push_back({int(kd[0]), int(kd[1]), int(kd[2]), int(kd[3]), int(kd[4]), int(kd[5]), int(kd[6]), int(kd[7]),
                      kqjl.data_ptr<float>()[i], kcent.data_ptr<float>() + LUT * i});
  const int64_t* vd = vdesc.data_ptr<int64_t>();
  for (int64_t i = 0; i < vdesc.size(0); ++i, vd += 8)
    a.vals.push_back({int(vd[0]), int(vd[1]), int(vd[2]), int(vd[3]), int(vd[6]), vcent.data_ptr<float>() + LUT * i});
  a.group = gdesc.numel() > 0;
  if (a.group) {
    const int64_t* g = gdesc.data_ptr<int64_t>();
    a.gv = {int(g[0]), int(g[1]), int(g[2]), int(g[3]), int(g[4])};
  }
  const int64_t nseq = block_table.size(0), tasks = nseq * a.hkv;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) decode_task(a, t / a.hkv, t % a.hkv);
  });
}

// tq_dense: the dense workspace of SPEC 9's dense prefill for one sequence: for its first len tokens
// (blocks block_row int64 [>= ceil(len / block_size)]) and every KV head, kout float [Hkv, len, MK + MS]
// = each key instance's centroids times its norm, then (QJL) the signs times norm * qjl_scale * gamma,
// and vout float [Hkv, len, MV] = the values' centroids times their norms (mse) or the dequantized
// values (group); a token whose values are non-finite gets vout = 0 and NaN keys (it still poisons
// exactly the rows that see it).  Parallel split: KV heads x blocks.
void tq_dense(const at::Tensor& cache, const at::Tensor& block_row, int64_t len, const at::Tensor& kdesc,
              const at::Tensor& kqjl, const at::Tensor& kcent, const at::Tensor& vdesc, const at::Tensor& vcent,
              const at::Tensor& gdesc, at::Tensor kout, at::Tensor vout) {
  check_cpu(cache, "cache", at::kByte);
  TORCH_CHECK(cache.dim() == 4 && cache.stride(3) == 1, "cache must be [num_blocks, num_kv_heads, block_size, slot]");
  check_contig(block_row, "block_row", at::kLong);
  check_contig(kout, "kout", at::kFloat);
  check_contig(vout, "vout", at::kFloat);
  static const float ident[LUT] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static const float pm[LUT] = {-1.f, 1.f};
  std::vector<KeyInst> keys;
  const int64_t* kd = kdesc.data_ptr<int64_t>();
  const int64_t mk = kout.size(2), vstride = vout.size(2), hkv = cache.size(1), bs = cache.size(2);
  int64_t ms_off = 0;
  for (int64_t i = 0; i < kdesc.size(0); ++i, kd += 8) {
    keys.push_back({int(kd[0]), int(kd[1]), int(kd[2]), int(kd[3]), int(kd[4]), int(kd[5]), int(kd[6]), int(kd[7]),
                    kqjl.data_ptr<float>()[i], kcent.data_ptr<float>() + LUT * i});
    ms_off += kd[0];  // the signs follow all key instances' codes
  }
  std::vector<ValInst> vals;
  const int64_t* vd = vdesc.data_ptr<int64_t>();
  for (int64_t i = 0; i < vdesc.size(0); ++i, vd += 8)
    vals.push_back({int(vd[0]), int(vd[1]), int(vd[2]), int(vd[3]), int(vd[6]), vcent.data_ptr<float>() + LUT * i});
  const bool group = gdesc.numel() > 0;
  GroupVals gv{};
  int64_t mv = 0;  // written value columns (vout may be wider: those columns are left as they are)
  for (const ValInst& v : vals) mv += v.m;
  if (group) {
    const int64_t* g = gdesc.data_ptr<int64_t>();
    gv = {int(g[0]), int(g[1]), int(g[2]), int(g[3]), int(g[4])};
    mv = ms_off;  // group values: head_size, the key instances' total
  }
  TORCH_CHECK(mv <= vstride, "vout is narrower than the values");
  const uint8_t* base = cache.data_ptr<uint8_t>();
  const int64_t* br = block_row.data_ptr<int64_t>();
  const int64_t nblk = (len + bs - 1) / bs;
  float* kp = kout.data_ptr<float>();
  float* vp = vout.data_ptr<float>();
  at::parallel_for(0, hkv * nblk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / nblk, blk = task % nblk;
      const uint8_t* blk_base = base + br[blk] * cache.stride(0) + h * cache.stride(1);
      for (int64_t j = 0; j < bs && blk * bs + j < len; ++j) {
        const int64_t t = blk * bs + j;
        const uint8_t* slot = blk_base + j * cache.stride(2);
        float* kr = kp + (h * len + t) * mk;
        float* vr = vp + (h * len + t) * vstride;
        for (const KeyInst& k : keys) {
          const float norm = ld_f32(slot + k.norm_off);
          if (k.codes_off >= 0) lookup(slot + k.codes_off, k.bits, k.m, k.cent, norm, kr + k.qoff);
          else std::fill(kr + k.qoff, kr + k.qoff + k.m, 0.f);
          if (k.signs_off >= 0)
            lookup(slot + k.signs_off, 1, k.m, pm, norm * k.qjl_scale * ld_f32(slot + k.rnorm_off), kr + ms_off + k.soff);
        }
        bool finite = true;
        if (group) {
          lookup(slot + gv.codes_off, gv.bits, static_cast<int>(mv), ident, 1.f, vr);
          for (int c0 = 0, k = 0; c0 < mv; c0 += gv.gs, ++k) {
            const float z = ld_f16(slot + gv.zero_off + 2 * k), sc = ld_f16(slot + gv.scale_off + 2 * k);
            finite &= std::isfinite(z) && std::isfinite(sc);
            for (int c = c0; c < c0 + gv.gs; ++c) vr[c] = z + sc * vr[c];
          }
        } else {
          for (const ValInst& v : vals) {
            const float norm = ld_f32(slot + v.norm_off);
            finite &= std::isfinite(norm);
            lookup(slot + v.codes_off, v.bits, v.m, v.cent, norm, vr + v.off);
          }
        }
        if (!finite) {
          std::fill(vr, vr + mv, 0.f);
          std::fill(kr, kr + mk, std::numeric_limits<float>::quiet_NaN());
        }
      }
    }
  });
}

// ---------------------------------------------------------------- store

template <typename T>
void prep_rows(const T* x, int64_t rows, int64_t d, const int64_t* chan, const int64_t* ioff, int64_t ni,
               float* u, float* norms, uint8_t* bad, int64_t mt) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * d;
      float* ur = u + r * mt;
      bool nonfinite = false;
      for (int64_t c = 0; c < d; ++c) nonfinite |= !std::isfinite(static_cast<float>(xr[c]));  // NaN / Inf
      for (int64_t i = 0; i < ni; ++i) {
        const int64_t o = ioff[i], m = ioff[i + 1] - o;
        float* ui = ur + o;
        if (chan) {
          for (int64_t c = 0; c < m; ++c) ui[c] = static_cast<float>(xr[chan[o + c]]);
        } else {
          for (int64_t c = 0; c < m; ++c) ui[c] = static_cast<float>(xr[o + c]);
        }
        float mx = 0.f;
#pragma omp simd reduction(max : mx)
        for (int64_t c = 0; c < m; ++c) mx = std::max(mx, std::fabs(ui[c]));
        const float div = mx > 0.f ? mx : 1.f;
        for (int64_t c = 0; c < m; ++c) ui[c] = ui[c] / div;
        float ss = dot(ui, ui, static_cast<int>(m));  // SPEC 10: the order of this sum is free
        ss = std::sqrt(ss);
        const float n = mx * ss, dn = ss > 0.f ? ss : 1.f;
        for (int64_t c = 0; c < m; ++c) ui[c] = ui[c] / dn;
        norms[r * ni + i] = n;
        nonfinite |= !std::isfinite(n);
      }
      bad[r] = nonfinite;
      if (nonfinite) std::fill(ur, ur + mt, 0.f);  // SPEC 8: u := 0
    }
  });
}

// x [rows, d] (float/half/bfloat16, contiguous); chan int64 [MT] (the instances' channels, concatenated)
// or empty (one instance over all channels); ioff int64 [ni + 1].  Writes u [rows, MT], norms [rows, ni],
// bad uint8 [rows].
void tq_store_prep(const at::Tensor& x, const at::Tensor& chan, const at::Tensor& ioff, at::Tensor u,
                   at::Tensor norms, at::Tensor bad) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() == 2, "x must be a contiguous CPU [rows, d]");
  check_contig(chan, "chan", at::kLong);
  check_contig(ioff, "ioff", at::kLong);
  check_contig(u, "u", at::kFloat);
  check_contig(norms, "norms", at::kFloat);
  check_contig(bad, "bad", at::kByte);
  const int64_t ni = ioff.numel() - 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tq_store_prep", [&] {
    prep_rows<scalar_t>(x.data_ptr<scalar_t>(), x.size(0), x.size(1), chan.numel() ? chan.data_ptr<int64_t>() : nullptr,
                        ioff.data_ptr<int64_t>(), ni, u.data_ptr<float>(), norms.data_ptr<float>(), bad.data_ptr<uint8_t>(),
                        u.size(1));
  });
}

inline void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void put_f32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }
inline void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

// Codes (< 2^bits) -> LSB-first stream (SPEC 5): 8 codes at a time are one word of `bits` bytes.
inline void pack(const uint8_t* codes, int m, int bits, uint8_t* out) {
  const int full = m / 8;
  for (int g = 0; g < full; ++g) {
    uint32_t w = 0;
    for (int i = 0; i < 8; ++i) w |= static_cast<uint32_t>(codes[8 * g + i]) << (bits * i);
    for (int k = 0; k < bits; ++k) out[bits * g + k] = static_cast<uint8_t>(w >> (8 * k));
  }
  out += bits * full;
  uint64_t accb = 0;
  int nb = 0;
  for (int c = 8 * full; c < m; ++c) {
    accb |= static_cast<uint64_t>(codes[c]) << nb;
    nb += bits;
    while (nb >= 8) {
      *out++ = static_cast<uint8_t>(accb & 255);
      accb >>= 8;
      nb -= 8;
    }
  }
  if (nb) *out = static_cast<uint8_t>(accb & 255);
}

struct EncInst {
  int m, bits, norm_off, codes_off, rnorm_off, signs_off, off;
  float qjl_scale;
  const float* bnd;   // 2^bits - 1 boundaries
  const float* cent;  // 2^bits centroids
  const float* s;     // S row-major [m, m] (QJL) or nullptr
};

uint32_t nan_bits(int64_t v) { return static_cast<uint32_t>(v); }

void encode_inst(const EncInst& p, const float* y, float norm, bool bad, uint32_t nan32, uint8_t* slot,
                 uint8_t* codes, float* r) {
  if (bad) {  // SPEC 8: NaN norm and gamma, codes and signs 0 (already zero)
    put_u32(slot + p.norm_off, nan32);
    if (p.rnorm_off >= 0) put_u32(slot + p.rnorm_off, nan32);
    return;
  }
  put_f32(slot + p.norm_off, norm);
  const int nbnd = p.bits ? (1 << p.bits) - 1 : 0;
  for (int c0 = 0; c0 < p.m; c0 += 32) {  // code = #{k : y > beta_k}: a tie takes the lower code
    const int n = std::min(32, p.m - c0);
    float yb[32] = {0.f};
    int32_t k[32] = {0};
    for (int c = 0; c < n; ++c) yb[c] = y[c0 + c];
    for (int b = 0; b < nbnd; ++b) {
      const float beta = p.bnd[b];
#pragma omp simd
      for (int c = 0; c < 32; ++c) k[c] += yb[c] > beta ? 1 : 0;
    }
    for (int c = 0; c < n; ++c) codes[c0 + c] = static_cast<uint8_t>(k[c]);
  }
  if (p.codes_off >= 0) pack(codes, p.m, p.bits, slot + p.codes_off);
  if (p.signs_off < 0) return;
  for (int c = 0; c < p.m; ++c) r[c] = y[c] - (p.bits ? p.cent[codes[c]] : 0.f);
  const float g = dot(r, r, p.m);
  for (int j = 0; j < p.m; ++j) codes[j] = dot(p.s + static_cast<int64_t>(j) * p.m, r, p.m) >= 0.f;
  pack(codes, p.m, 1, slot + p.signs_off);
  put_f32(slot + p.rnorm_off, std::sqrt(g));
}

template <typename T>
void encode_group(const GroupVals& gv, const T* v, int d, uint8_t* slot, uint16_t nan16, uint8_t* codes) {
  const float levels = static_cast<float>((1 << gv.bits) - 1);
  const int ng = d / gv.gs;
  bool bad = false;
  for (int c = 0; c < d; ++c) bad |= !std::isfinite(static_cast<float>(v[c]));
  std::vector<uint16_t> z16(ng), s16(ng);
  for (int k = 0; k < ng && !bad; ++k) {
    float mn = static_cast<float>(v[k * gv.gs]), mx = mn;
    for (int c = k * gv.gs; c < (k + 1) * gv.gs; ++c) {
      mn = std::min(mn, static_cast<float>(v[c]));
      mx = std::max(mx, static_cast<float>(v[c]));
    }
    z16[k] = c10::detail::fp16_ieee_from_fp32_value(mn);
    s16[k] = c10::detail::fp16_ieee_from_fp32_value((mx - mn) / levels);
    const float zf = c10::detail::fp16_ieee_to_fp32_value(z16[k]), sf = c10::detail::fp16_ieee_to_fp32_value(s16[k]);
    const float mxf = c10::detail::fp16_ieee_to_fp32_value(c10::detail::fp16_ieee_from_fp32_value(mx));
    bad |= !(std::isfinite(zf) && std::isfinite(sf) && std::isfinite(mxf));
  }
  if (bad) {
    for (int k = 0; k < ng; ++k) {
      put_u16(slot + gv.scale_off + 2 * k, nan16);
      put_u16(slot + gv.zero_off + 2 * k, nan16);
    }
    return;  // codes 0
  }
  for (int k = 0; k < ng; ++k) {
    put_u16(slot + gv.scale_off + 2 * k, s16[k]);
    put_u16(slot + gv.zero_off + 2 * k, z16[k]);
    const float zf = c10::detail::fp16_ieee_to_fp32_value(z16[k]), sf = c10::detail::fp16_ieee_to_fp32_value(s16[k]);
    for (int c = k * gv.gs; c < (k + 1) * gv.gs; ++c) {
      const float t = sf > 0.f ? (static_cast<float>(v[c]) - zf) / sf : 0.f;
      codes[c] = static_cast<uint8_t>(std::min(std::max(std::floor(t + 0.5f), 0.f), levels));
    }
  }
  pack(codes, d, gv.bits, slot + gv.codes_off);
}

std::vector<EncInst> enc_insts(const at::Tensor& desc, const float* qjl_scale, const at::Tensor& bnd,
                               const at::Tensor& cent, const at::Tensor& smat) {
  std::vector<EncInst> out;
  const int64_t* d = desc.data_ptr<int64_t>();
  int64_t soff = 0;
  for (int64_t i = 0; i < desc.size(0); ++i, d += 8) {
    EncInst p{int(d[0]), int(d[1]), int(d[2]), int(d[3]), int(d[4]), int(d[5]), int(d[6]),
              qjl_scale[i], bnd.data_ptr<float>() + LUT * i, cent.data_ptr<float>() + LUT * i,
              nullptr};
    if (p.signs_off >= 0) {
      p.s = smat.data_ptr<float>() + soff;
      soff += static_cast<int64_t>(p.m) * p.m;
    }
    out.push_back(p);
  }
  return out;
}

// y float [R (+ R), MT]: rotated keys of rows (token, head) = r, then (value mode mse) the values';
// norms float [same rows, ni]; bad uint8 [same rows].  vraw: values [R, d] (value mode group) or empty.
// kdesc/vdesc: instance descriptors as for tq_decode (off: in MT);
// qjl float [n], bnd/cent float [n, 16], smat float: the S matrices of the QJL instances, row-major,
// concatenated.  nan: {NORM_NAN_BITS, GROUP_NAN_BITS}.
void tq_store_encode(const at::Tensor& y, const at::Tensor& norms, const at::Tensor& bad, const at::Tensor& vraw,
                     const at::Tensor& slot_mapping, at::Tensor cache, int64_t num_heads, const at::Tensor& kdesc,
                     const at::Tensor& kqjl, const at::Tensor& kbnd, const at::Tensor& kcent, const at::Tensor& ksmat,
                     const at::Tensor& vdesc, const at::Tensor& vbnd, const at::Tensor& vcent, const at::Tensor& gdesc,
                     int64_t norm_nan_bits, int64_t group_nan_bits) {
  check_contig(y, "y", at::kFloat);
  check_contig(norms, "norms", at::kFloat);
  check_contig(bad, "bad", at::kByte);
  check_contig(slot_mapping, "slot_mapping", at::kLong);
  check_cpu(cache, "cache", at::kByte);
  for (const at::Tensor* t : {&kdesc, &vdesc, &gdesc}) check_contig(*t, "desc", at::kLong);
  for (const at::Tensor* t : {&kqjl, &kbnd, &kcent, &ksmat, &vbnd, &vcent}) check_contig(*t, "table", at::kFloat);
  const int64_t ntok = slot_mapping.numel(), capacity = cache.size(0) * cache.size(2);
  const int64_t* smp = slot_mapping.data_ptr<int64_t>();
  std::vector<int64_t> kept;  // SPEC 7: slots < 0 are padding; the rest must be in range and distinct
  for (int64_t t = 0; t < ntok; ++t)
    if (smp[t] >= 0) kept.push_back(smp[t]);
  if (kept.empty()) return;
  std::sort(kept.begin(), kept.end());
  TORCH_CHECK_VALUE(kept.back() < capacity, "slot_mapping has slot ", kept.back(),
                    " >= num_blocks * block_size = ", capacity);
  TORCH_CHECK_VALUE(std::adjacent_find(kept.begin(), kept.end()) == kept.end(),
                    "slot_mapping has duplicate non-negative slots");
  const std::vector<EncInst> keys = enc_insts(kdesc, kqjl.data_ptr<float>(), kbnd, kcent, ksmat);
  const std::vector<float> vq(vdesc.size(0), 0.f);
  const std::vector<EncInst> vals = enc_insts(vdesc, vq.data(), vbnd, vcent, ksmat);
  const bool group = gdesc.numel() > 0;
  GroupVals gv{};
  if (group) {
    const int64_t* g = gdesc.data_ptr<int64_t>();
    gv = {int(g[0]), int(g[1]), int(g[2]), int(g[3]), int(g[4])};
    TORCH_CHECK(vraw.device().is_cpu() && vraw.is_contiguous() && vraw.dim() == 2, "vraw must be [rows, d]");
  }
  const int64_t R = slot_mapping.numel() * num_heads, mt = y.size(1), ni = norms.size(1);
  const int64_t slot_bytes = cache.size(3), bs = cache.size(2);
  const int64_t s0 = cache.stride(0), s1 = cache.stride(1), s2 = cache.stride(2);
  uint8_t* base = cache.data_ptr<uint8_t>();
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  const float* yp = y.data_ptr<float>();
  const float* np = norms.data_ptr<float>();
  const uint8_t* bp = bad.data_ptr<uint8_t>();
  const uint32_t nan32 = nan_bits(norm_nan_bits);
  const uint16_t nan16 = static_cast<uint16_t>(group_nan_bits);
  const int64_t d = group ? vraw.size(1) : 0;
  at::parallel_for(0, R, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> codes(std::max<int64_t>(mt, d) + 8);
    std::vector<float> r(mt + 8);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t s = sm[row / num_heads], h = row % num_heads;
      if (s < 0) continue;
      uint8_t* slot = base + (s / bs) * s0 + h * s1 + (s % bs) * s2;
      std::memset(slot, 0, slot_bytes);
      for (size_t i = 0; i < keys.size(); ++i)
        encode_inst(keys[i], yp + row * mt + keys[i].off, np[row * ni + i], bp[row], nan32, slot, codes.data(),
                    r.data());
      if (group) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vraw.scalar_type(), "tq_store_group", [&] {
          encode_group<scalar_t>(gv, vraw.data_ptr<scalar_t>() + row * d, static_cast<int>(d), slot, nan16,
                                 codes.data());
        });
      } else {
        const int64_t vr = R + row;
        for (size_t i = 0; i < vals.size(); ++i)
          encode_inst(vals[i], yp + vr * mt + vals[i].off, np[vr * ni + i], bp[vr], nan32, slot, codes.data(),
                      r.data());
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY(turboquant_cpu, m) {
  m.def("decode(Tensor cache, Tensor block_table, Tensor seq_lens, Tensor q_rot, Tensor q_sgn, Tensor kdesc, "
        "Tensor kqjl, Tensor kcent, Tensor vdesc, Tensor vcent, Tensor gdesc, float scale, Tensor(a!) out) -> ()");
  m.def("dense(Tensor cache, Tensor block_row, int len, Tensor kdesc, Tensor kqjl, Tensor kcent, Tensor vdesc, "
        "Tensor vcent, Tensor gdesc, Tensor(a!) kout, Tensor(b!) vout) -> ()");
  m.def("store_prep(Tensor x, Tensor chan, Tensor ioff, Tensor(a!) u, Tensor(b!) norms, Tensor(c!) bad) -> ()");
  m.def("store_encode(Tensor y, Tensor norms, Tensor bad, Tensor vraw, Tensor slot_mapping, Tensor(a!) cache, "
        "int num_heads, Tensor kdesc, Tensor kqjl, Tensor kbnd, Tensor kcent, Tensor ksmat, Tensor vdesc, "
        "Tensor vbnd, Tensor vcent, Tensor gdesc, int norm_nan_bits, int group_nan_bits) -> ()");
}

TORCH_LIBRARY_IMPL(turboquant_cpu, CPU, m) {
  m.impl("decode", &tq_decode);
  m.impl("dense", &tq_dense);
  m.impl("store_prep", &tq_store_prep);
  m.impl("store_encode", &tq_store_encode);
}
