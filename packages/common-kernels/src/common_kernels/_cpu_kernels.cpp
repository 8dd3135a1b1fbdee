// common-kernels' CPU kernels: forward only, float32. common_kernels/_cpu_kernels.py compiles this
// file on first use for the machine it runs on (torch.utils.cpp_extension, -O3 -march=native, the
// at::vec width of torch's own CPU capability) and the ops appear as torch.ops.common_kernels_cpu.
//
// - topk_membership: the k-largest mask of each row of similarities (ties to the lower index),
//   what torch.topk + a comparison give, with no per-row sort.
// - add_layer_norm_: x += layer_norm(y), a post-norm residual in one pass per row.
// - masked_attention: softmax(scale q k^T + mask + bias) v per (window, head), optionally cosine
//   (q and k normalised in the same pass), the logits of a tile of 8 queries kept in registers
//   and a small scratch, never as a (B, H, N, N) tensor.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;

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
    uint64_t keep = lanes_where<_MM_CMPINT_NLT>(key, at_floor) & ~equal;  // strictly above the floor: fewer than k+1
    for (int64_t need = k - _mm_popcnt_u64(keep), ties = equal; need > 0; --need) {
      const uint64_t lowest = ties & (~ties + 1);  // the tied entry of lowest index
      keep |= lowest;
      ties ^= lowest;
    }
    _mm512_storeu_si512(m + r * 64, _mm512_maskz_mov_epi8(keep, ones));
  }
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
#if defined(CPU_CAPABILITY_AVX512)
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

constexpr int kRows = 8;  // queries per tile: 8 independent accumulators hide FMA latency

// The mask's entries j0 .. j0+w-1 as additive terms: a float mask as it is, a bool membership
// as 0 (kept) or -inf.
inline Vec mask_at(const float* row, int64_t j0, int64_t w) { return Vec::loadu(row + j0, w); }

inline Vec mask_at(const bool* row, int64_t j0, int64_t w) {
  constexpr int64_t W = Vec::size();
  const float minus_inf = -std::numeric_limits<float>::infinity();
#if defined(CPU_CAPABILITY_AVX512)
  if (w == W) {  // 16 bytes -> a lane mask -> 0 or -inf
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + j0));
    return _mm512_mask_blend_ps(_mm_test_epi8_mask(bytes, bytes), _mm512_set1_ps(minus_inf),
                                _mm512_setzero_ps());
  }
#endif
  float lanes[W];
  for (int64_t l = 0; l < W; ++l) lanes[l] = l < w && row[j0 + l] ? 0.0f : minus_inf;
  return Vec::loadu(lanes);
}

// Queries i0 .. i0+R-1 of one (window, head): q (N x D, scaled) and kt (D x N) contiguous, v and
// out (N x D) and the mask and bias rows (N x N) with unit-stride rows, logits an R x N scratch.
// R is a compile-time constant so that the R accumulators stay in registers.
template <int R, typename Mask>
void attend_rows(int64_t i0, const float* q, const float* kt, const float* v, int64_t v_row,
                 const Mask* mask,
                 int64_t mask_row, const float* bias, int64_t bias_row, float* out,
                 int64_t out_row, float* logits, int64_t n, int64_t d) {
  constexpr int64_t W = Vec::size();
  const Vec zero(0.0f), minus_inf(-std::numeric_limits<float>::infinity());
  for (int64_t j0 = 0; j0 < n; j0 += W) {  // logits[r, j0:j0+W] = scale q[i0+r] . k[j0:j0+W]
    const int64_t w = std::min(W, n - j0);
    Vec acc[R];
    for (int r = 0; r < R; ++r) acc[r] = zero;
    for (int64_t c = 0; c < d; ++c) {
      const Vec kc = Vec::loadu(kt + c * n + j0, w);
      for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec(q[(i0 + r) * d + c]), kc, acc[r]);
    }
    for (int r = 0; r < R; ++r) acc[r].store(logits + r * n + j0, w);
  }
  float inverse[R];  // 1 / the softmax denominators, applied to the output
  for (int r = 0; r < R; ++r) {  // exp(logit - max) over the row's dictionary entries, in place
    float* lr = logits + r * n;
    const Mask* mr = mask + (i0 + r) * mask_row;
    const float* br = bias == nullptr ? nullptr : bias + (i0 + r) * bias_row;
    Vec peak = minus_inf;
    for (int64_t j0 = 0; j0 < n; j0 += W) {
      const int64_t w = std::min(W, n - j0);
      Vec x = Vec::loadu(lr + j0, w) + mask_at(mr, j0, w);
      if (br != nullptr) x = x + Vec::loadu(br + j0, w);
      if (w < W) x = Vec::set(minus_inf, x, w);
      x.store(lr + j0, w);
      peak = at::vec::maximum(peak, x);
    }
    const Vec top(at::vec::vec_reduce_all<float>(
        [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, peak));
    Vec total = zero;
    for (int64_t j0 = 0; j0 < n; j0 += W) {
      const int64_t w = std::min(W, n - j0);
      const Vec x = Vec::loadu(lr + j0, w);
      Vec e = Vec::blendv(zero, (x - top).exp(), x != minus_inf);  // exactly 0 outside
      if (w < W) e = Vec::set(zero, e, w);
      e.store(lr + j0, w);
      total = total + e;
    }
    inverse[r] = 1.0f / at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, total);
  }
  for (int64_t c0 = 0; c0 < d; c0 += W) {  // out[i0+r, c0:c0+W] = sum_j p[r, j] v[j, c0:c0+W]
    const int64_t w = std::min(W, d - c0);
    Vec acc[R];
    for (int r = 0; r < R; ++r) acc[r] = zero;
    for (int64_t j = 0; j < n; ++j) {
      const Vec vj = Vec::loadu(v + j * v_row + c0, w);
      for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec(logits[r * n + j]), vj, acc[r]);
    }
    for (int r = 0; r < R; ++r) (acc[r] * Vec(inverse[r])).store(out + (i0 + r) * out_row + c0, w);
  }
}

// 1 / max(|x|, eps) of a D-vector (F.normalize's eps).
inline float inverse_norm(const float* x, int64_t d) {
  constexpr int64_t W = Vec::size();
  Vec squares(0.0f);
  for (int64_t c0 = 0; c0 < d; c0 += W) {
    const Vec xc = Vec::loadu(x + c0, std::min(W, d - c0));  // the tail's lanes load as 0
    squares = at::vec::fmadd(xc, xc, squares);
  }
  const float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, squares);
  return 1.0f / std::max(std::sqrt(sum), 1e-12f);
}

template <typename Mask>
void attend_all(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& member, const at::Tensor& bias, double scale,
                const at::Tensor& heads_scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const bool has_bias = bias.defined(), cosine = heads_scale.defined();
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const Mask* mp = member.data_ptr<Mask>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  const float* hp = cosine ? heads_scale.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const auto strides = [](const at::Tensor& t) {
    return std::vector<int64_t>(t.strides().begin(), t.strides().end());
  };
  const auto qs = strides(q), ks = strides(k), vs = strides(v), ms = strides(member),
             os = strides(out), bs = has_bias ? strides(bias) : ms;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q_scaled(N * D), kt(D * N), logits(kRows * N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* qh = qp + b * qs[0] + h * qs[1];
      const float* kh = kp + b * ks[0] + h * ks[1];
      for (int64_t j = 0; j < N; ++j) {  // k transposed (and normalised)
        const float* kj = kh + j * ks[2];
        const float inv = cosine ? inverse_norm(kj, D) : 1.0f;
        for (int64_t c = 0; c < D; ++c) kt[c * N + j] = cosine ? kj[c] * inv : kj[c];
      }
      for (int64_t i = 0; i < N; ++i) {  // q scaled (cosine: normalised, times the head's scale)
        const float* qi = qh + i * qs[2];
        const Vec factor(cosine ? inverse_norm(qi, D) * hp[h] : static_cast<float>(scale));
        for (int64_t c0 = 0; c0 < D; c0 += Vec::size()) {
          const int64_t w = std::min<int64_t>(Vec::size(), D - c0);
          (Vec::loadu(qi + c0, w) * factor).store(q_scaled.data() + i * D + c0, w);
        }
      }
      const float* vh = vp + b * vs[0] + h * vs[1];
      const Mask* mh = mp + b * ms[0] + h * ms[1];
      const float* bh_bias = has_bias ? bp + b * bs[0] + h * bs[1] : nullptr;
      float* oh = op + b * os[0] + h * os[1];
      int64_t i0 = 0;
      for (; i0 + kRows <= N; i0 += kRows)
        attend_rows<kRows>(i0, q_scaled.data(), kt.data(), vh, vs[2], mh, ms[2], bh_bias, bs[2], oh,
                           os[2], logits.data(), N, D);
      for (; i0 < N; ++i0)
        attend_rows<1>(i0, q_scaled.data(), kt.data(), vh, vs[2], mh, ms[2], bh_bias, bs[2], oh, os[2],
                       logits.data(), N, D);
    }
  });
}

// softmax(scale q k^T + mask + bias) v for (B, H, N, D) float32 q, k, v, the dictionary as a
// (B|1, H|1, N, N) bool membership or float32 additive mask (log(multiplicity) at a query's
// keys, -inf elsewhere), and the bias (B|1, H|1, N, N) or none; all with unit-stride rows. With
// head_scale (H,) the attention is cosine: q and k are L2-normalised here and the logits of head
// h multiplied by head_scale[h] (scale is then 1). The output is (B, H, N, D) laid out as
// (B, N, H, D): out.transpose(1, 2) is contiguous. Parallel over (window, head).
at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& mask, const c10::optional<at::Tensor>& bias,
                            double scale, const c10::optional<at::Tensor>& head_scale) {
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == at::kFloat && k.sizes() == q.sizes() &&
                  v.sizes() == q.sizes() && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat,
              "q, k and v must be float32 tensors of one (B, H, N, D) shape");
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const at::Tensor member = (mask.dim() == 3 ? mask.unsqueeze(1) : mask).expand({B, H, N, N});
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor bias_ = has_bias ? bias->expand({B, H, N, N}) : at::Tensor();
  TORCH_CHECK(member.scalar_type() == at::kFloat || member.scalar_type() == at::kBool,
              "mask must be bool (membership) or float32 (additive)");
  TORCH_CHECK(!has_bias || bias_.scalar_type() == at::kFloat, "bias must be float32");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && member.stride(3) == 1 &&
                  (!has_bias || bias_.stride(3) == 1),
              "q, k, v, mask and bias need unit-stride rows");
  at::Tensor heads_scale;
  if (head_scale.has_value() && head_scale->defined()) {
    heads_scale = head_scale->to(at::kFloat).contiguous();
    TORCH_CHECK(heads_scale.numel() == H, "head_scale must hold one value per head");
  }
  auto out = at::empty({B, N, H, D}, q.options()).permute({0, 2, 1, 3});  // (B, H, N, D)
  if (member.scalar_type() == at::kBool) {
    attend_all<bool>(q, k, v, member, bias_, scale, heads_scale, out);
  } else {
    attend_all<float>(q, k, v, member, bias_, scale, heads_scale, out);
  }
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

}  // namespace

TORCH_LIBRARY(common_kernels_cpu, m) {
  m.def("topk_membership(Tensor sim, int k) -> Tensor");
  m.def(
      "masked_attention(Tensor q, Tensor k, Tensor v, Tensor mask, Tensor? bias, float scale, "
      "Tensor? head_scale) -> Tensor");
  m.impl("topk_membership", c10::DispatchKey::CPU, &topk_membership);
  m.impl("masked_attention", c10::DispatchKey::CPU, &masked_attention);
  m.def("add_layer_norm_(Tensor(a!) x, Tensor y, Tensor weight, Tensor bias, float eps) -> Tensor(a!)");
  m.impl("add_layer_norm_", c10::DispatchKey::CPU, &add_layer_norm_);
}
