// common-kernels' row-wise CPU kernels, float32, compiled with _cpu_kernels.cpp into one library
// (common_kernels/_cpu_kernels.py) and registered into its torch.ops.common_kernels_cpu:
//
// - topk_membership: the k-largest mask of each row of similarities (ties to the lower index),
//   what torch.topk + a comparison give, with no per-row sort (rows of 64 on AVX-512 and AVX2:
//   a bitwise search for the threshold, AVX2 interleaving four rows' searches).
// - add_layer_norm_: x += layer_norm(y), a post-norm residual in one pass per row.
// - bias_gelu_: x = gelu(x + bias), an MLP's first bias and activation in one pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "_cpu_vec.h"
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// A row of 64's kept lanes: those strictly above the threshold (fewer than k), plus the lanes
// equal to it of lowest index until there are k.
inline uint64_t with_lowest_ties(uint64_t above, uint64_t equal, int64_t k) {
  for (int64_t need = k - _mm_popcnt_u64(above); need > 0; --need) {
    const uint64_t lowest = equal & (~equal + 1);  // the tied entry of lowest index
    above |= lowest;
    equal ^= lowest;
  }
  return above;
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// Rows of 64 similarities on AVX-512: the (k+1)-th largest value by a bitwise search over the
// values' order-preserving unsigned integers (32 steps of 4 compares and a popcount), then the
// entries above it, plus the entries equal to it of lowest index up to k in all.
inline __m512i order_key(__m512 x) {
  const __m512i bits = _mm512_castps_si512(_mm512_add_ps(x, _mm512_setzero_ps()));  // -0 -> +0
  const __m512i flip = _mm512_or_si512(_mm512_srai_epi32(bits, 31), _mm512_set1_epi32(INT32_MIN));
  return _mm512_xor_si512(bits, flip);  // negative: all bits flipped; positive: the sign bit
}

// The 64 keys' lanes where (key Op t), as one 64-bit mask (Op: an _MM_CMPINT_* predicate).
template <int Op>
inline uint64_t lanes_where(const __m512i key[4], __m512i t) {
  uint64_t lanes = 0;
  for (int b = 0; b < 4; ++b)
    lanes |= static_cast<uint64_t>(_mm512_cmp_epu32_mask(key[b], t, Op)) << (16 * b);
  return lanes;
}

void membership_rows_64(const float* s, bool* m, int64_t begin, int64_t end, int64_t k) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t r = begin; r < end; ++r) {
    const float* row = s + r * 64;
    __m512i key[4];
    for (int b = 0; b < 4; ++b) key[b] = order_key(_mm512_loadu_ps(row + 16 * b));
    uint32_t floor = 0;  // the largest t with at least k+1 keys >= t: the (k+1)-th largest key
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t candidate = floor | (1u << bit);
      const auto count = _mm_popcnt_u64(lanes_where<_MM_CMPINT_NLT>(
          key, _mm512_set1_epi32(static_cast<int32_t>(candidate))));
      floor = count >= k + 1 ? candidate : floor;
    }
    const __m512i at_floor = _mm512_set1_epi32(static_cast<int32_t>(floor));
    const uint64_t equal = lanes_where<_MM_CMPINT_EQ>(key, at_floor);
    const uint64_t above = lanes_where<_MM_CMPINT_NLT>(key, at_floor) & ~equal;
    const uint64_t keep = with_lowest_ties(above, equal, k);
    _mm512_storeu_si512(m + r * 64, _mm512_maskz_mov_epi8(keep, ones));
  }
}
#elif defined(CPU_CAPABILITY_AVX2)
// The same search on AVX2, over signed order keys in 8 registers (AVX2 compares signed only):
// the count of keys below a threshold packs the 64 compare masks into two bytes masks (lane
// order lost, which a count ignores); the final masks are read in lane order.
inline __m256i order_key(__m256 x) {
  const __m256i bits = _mm256_castps_si256(_mm256_add_ps(x, _mm256_setzero_ps()));  // -0 -> +0
  const __m256i magnitude = _mm256_and_si256(_mm256_srai_epi32(bits, 31),
                                             _mm256_set1_epi32(INT32_MAX));
  return _mm256_xor_si256(bits, magnitude);  // negative: all but the sign bit flipped
}

inline int64_t count_below(const __m256i key[8], __m256i t) {
  __m256i bytes[2];
  for (int half = 0; half < 2; ++half) {
    const __m256i* k = key + 4 * half;
    bytes[half] = _mm256_packs_epi16(
        _mm256_packs_epi32(_mm256_cmpgt_epi32(t, k[0]), _mm256_cmpgt_epi32(t, k[1])),
        _mm256_packs_epi32(_mm256_cmpgt_epi32(t, k[2]), _mm256_cmpgt_epi32(t, k[3])));
  }
  return _mm_popcnt_u32(static_cast<uint32_t>(_mm256_movemask_epi8(bytes[0]))) +
         _mm_popcnt_u32(static_cast<uint32_t>(_mm256_movemask_epi8(bytes[1])));
}

// The 64 keys' lanes where compare(key) holds, in lane order.
template <typename Compare>
inline uint64_t lanes_where(const __m256i key[8], Compare compare) {
  uint64_t lanes = 0;
  for (int b = 0; b < 8; ++b) {
    const auto bits = _mm256_movemask_ps(_mm256_castsi256_ps(compare(key[b])));
    lanes |= static_cast<uint64_t>(static_cast<uint32_t>(bits)) << (8 * b);
  }
  return lanes;
}

// Rows r .. r+R-1: R independent searches interleaved (one search is a chain of dependent
// steps; R of them keep the core busy).
template <int R>
void membership_rows_64_tile(const float* s, bool* m, int64_t r, int64_t k) {
  __m256i key[R][8];
  uint32_t floor[R];  // over the keys as unsigned (sign bit flipped): the (k+1)-th largest
  for (int i = 0; i < R; ++i) {
    for (int b = 0; b < 8; ++b) key[i][b] = order_key(_mm256_loadu_ps(s + (r + i) * 64 + 8 * b));
    floor[i] = 0;
  }
  for (int bit = 31; bit >= 0; --bit) {
    for (int i = 0; i < R; ++i) {
      const uint32_t candidate = floor[i] | (1u << bit);
      const __m256i t = _mm256_set1_epi32(static_cast<int32_t>(candidate ^ 0x80000000u));
      floor[i] = 64 - count_below(key[i], t) >= k + 1 ? candidate : floor[i];
    }
  }
  for (int i = 0; i < R; ++i) {
    const __m256i at_floor = _mm256_set1_epi32(static_cast<int32_t>(floor[i] ^ 0x80000000u));
    const uint64_t equal =
        lanes_where(key[i], [&](__m256i x) { return _mm256_cmpeq_epi32(x, at_floor); });
    const uint64_t above =
        lanes_where(key[i], [&](__m256i x) { return _mm256_cmpgt_epi32(x, at_floor); });
    const uint64_t keep = with_lowest_ties(above, equal, k);
    for (int j = 0; j < 64; ++j) m[(r + i) * 64 + j] = (keep >> j) & 1;
  }
}

void membership_rows_64(const float* s, bool* m, int64_t begin, int64_t end, int64_t k) {
  constexpr int kTile = 4;
  int64_t r = begin;
  for (; r + kTile <= end; r += kTile) membership_rows_64_tile<kTile>(s, m, r, k);
  for (; r < end; ++r) membership_rows_64_tile<1>(s, m, r, k);
}
#endif

// Row r of the (rows, n) similarities -> True at its k largest entries, equal values to the
// lower index first: entry j is kept when fewer than k entries come before it in that order.
at::Tensor topk_membership(const at::Tensor& sim, int64_t k) {
  TORCH_CHECK(sim.dim() == 2 && sim.scalar_type() == at::kFloat && sim.is_contiguous(),
              "sim must be a contiguous (rows, N) float32 tensor");
  const int64_t rows = sim.size(0), n = sim.size(1);
  auto out = at::empty({rows, n}, sim.options().dtype(at::kBool));
  const float* s = sim.data_ptr<float>();
  bool* m = out.data_ptr<bool>();
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (n == 64) {
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      membership_rows_64(s, m, begin, end, k);
    });
    return out;
  }
#endif
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> before(n);  // per entry j: the entries that come before it
    int32_t* __restrict rank = before.data();
    for (int64_t r = begin; r < end; ++r) {
      const float* __restrict row = s + r * n;
      std::fill(rank, rank + n, 0);
      for (int64_t i = 0; i < n; ++i) {  // i comes before j: s_i > s_j, or s_i == s_j and i < j
        const float si = row[i];
#pragma omp simd
        for (int64_t j = 0; j <= i; ++j) rank[j] += si > row[j];
#pragma omp simd
        for (int64_t j = i + 1; j < n; ++j) rank[j] += si >= row[j];
      }
      bool* __restrict mr = m + r * n;
      for (int64_t j = 0; j < n; ++j) mr[j] = rank[j] < k;
    }
  });
  return out;
}

// x += layer_norm(y) * weight + bias over the last dim of contiguous float32 (..., C) x and y, in
// place (a post-norm residual): one pass over each row, held in cache.
at::Tensor add_layer_norm_(at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                           const at::Tensor& bias, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && y.scalar_type() == at::kFloat &&
                  x.sizes() == y.sizes() && x.is_contiguous() && y.is_contiguous(),
              "x and y must be contiguous float32 tensors of one shape");
  const int64_t C = x.size(-1), rows = C == 0 ? 0 : x.numel() / C;
  const at::Tensor w = weight.to(at::kFloat).contiguous(), b = bias.to(at::kFloat).contiguous();
  TORCH_CHECK(w.numel() == C && b.numel() == C, "weight and bias must hold C values");
  float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  constexpr int64_t W = Vec::size();
  const auto add = [](Vec& a, Vec& c) { return a + c; };
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* yr = yp + r * C;
      float* xr = xp + r * C;
      Vec total(0.0f);
      for (int64_t c0 = 0; c0 < C; c0 += W) total = total + Vec::loadu(yr + c0, std::min(W, C - c0));
      const Vec mean(at::vec::vec_reduce_all<float>(add, total) / C);
      Vec squares(0.0f);
      for (int64_t c0 = 0; c0 < C; c0 += W) {
        const int64_t w = std::min(W, C - c0);
        const Vec centred = Vec::set(Vec(0.0f), Vec::loadu(yr + c0, w) - mean, w);
        squares = at::vec::fmadd(centred, centred, squares);
      }
      const float variance = at::vec::vec_reduce_all<float>(add, squares) / C;
      const Vec inverse_std(1.0f / std::sqrt(variance + static_cast<float>(eps)));
      for (int64_t c0 = 0; c0 < C; c0 += W) {
        const int64_t w = std::min(W, C - c0);
        const Vec normed = (Vec::loadu(yr + c0, w) - mean) * inverse_std;
        const Vec out = Vec::loadu(xr + c0, w) +
                        at::vec::fmadd(normed, Vec::loadu(wp + c0, w), Vec::loadu(bp + c0, w));
        out.store(xr + c0, w);
      }
    }
  });
  return x;
}

// x = gelu(x + bias) in place (torch's erf GELU, _cpu_vec.h) over a contiguous float32 (..., C)
// x, with bias (C,) or none: an MLP's activation, over its first linear layer's output or over
// a product made without the bias, in one pass.
at::Tensor bias_gelu_(at::Tensor& x, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1,
              "x must be a contiguous float32 tensor of at least one dim");
  const int64_t C = x.size(-1), rows = C == 0 ? 0 : x.numel() / C;
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(b.numel() == C, "bias must hold C = x.size(-1) values");
  }
  float* xp = x.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  constexpr int64_t W = Vec::size();
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* xr = xp + r * C;
      for (int64_t c0 = 0; c0 < C; c0 += W) {
        const int64_t w = std::min(W, C - c0);
        Vec v = Vec::loadu(xr + c0, w);
        if (bp != nullptr) v = v + Vec::loadu(bp + c0, w);
        common_kernels_vec::gelu(v).store(xr + c0, w);
      }
    }
  });
  return x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(common_kernels_cpu, m) {
  m.def("topk_membership(Tensor sim, int k) -> Tensor");
  m.impl("topk_membership", c10::DispatchKey::CPU, &topk_membership);
  m.def("add_layer_norm_(Tensor(a!) x, Tensor y, Tensor weight, Tensor bias, float eps) -> Tensor(a!)");
  m.impl("add_layer_norm_", c10::DispatchKey::CPU, &add_layer_norm_);
  m.def("bias_gelu_(Tensor(a!) x, Tensor? bias) -> Tensor(a!)");
  m.impl("bias_gelu_", c10::DispatchKey::CPU, &bias_gelu_);
}
