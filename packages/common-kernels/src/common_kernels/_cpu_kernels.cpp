// common-kernels' CPU attention kernels, float32. common_kernels/_cpu_kernels.py compiles this file
// with _cpu_rows.cpp (the top-k membership and add_layer_norm_) on first use for the machine it
// runs on (torch.utils.cpp_extension, -O3 -march=native, the at::vec width of torch's own CPU
// capability) and the ops appear as torch.ops.common_kernels_cpu.
//
// - masked_attention: softmax(scale q k^T + mask + bias) v per (window, head), optionally cosine
//   (q and k normalised in the same pass), the logits of a tile of 8 queries kept in registers
//   and a small scratch, never as a (B, H, N, N) tensor.
// - masked_attention_lse / masked_attention_backward: the same attention for training (the
//   forward also gives each query's log-sum-exp; the backward recomputes the probabilities from
//   it and returns the gradients of q, k, v and the bias), one (window, head) at a time in cache.
// The softmax exponentials are _cpu_vec.h's exp_nonpositive (within 2.4e-7 relative, 0 exactly
// off the dictionary), the same in the forward and in the backward that recomputes the
// probabilities.
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
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
using common_kernels_vec::exp_nonpositive;

constexpr int kRows = 8;  // queries per tile: 8 independent accumulators hide FMA latency
constexpr int kGradRows = 4;  // the backward's: 4 x 2 vectors of logits, as many of gradients

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
#elif defined(CPU_CAPABILITY_AVX2)
  if (w == W) {  // 8 bytes -> 8 lanes, all ones where the byte is 0 -> -inf there, else 0
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j0));
    const __m256i outside =
        _mm256_cmpeq_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_setzero_si256());
    return _mm256_and_ps(_mm256_castsi256_ps(outside), _mm256_set1_ps(minus_inf));
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
                 int64_t out_row, float* logits, float* lse, int64_t n, int64_t d) {
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
      peak = at::vec::clamp_min(x, peak);  // max(peak, x); a NaN x stays in the row
    }
    const float top_value = at::vec::vec_reduce_all<float>(
        [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, peak);
    const Vec top(top_value);
    Vec total = zero;
    for (int64_t j0 = 0; j0 < n; j0 += W) {
      const int64_t w = std::min(W, n - j0);
      const Vec x = Vec::loadu(lr + j0, w);
      Vec e = exp_nonpositive(x - top);  // exactly 0 outside
      if (w < W) e = Vec::set(zero, e, w);
      e.store(lr + j0, w);
      total = total + e;
    }
    const float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, total);
    inverse[r] = 1.0f / sum;
    if (lse != nullptr) lse[i0 + r] = top_value + std::log(sum);
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

// body(rows, i0) over rows 0 .. n-1 in tiles of Tile, then one at a time; rows is a
// std::integral_constant (the tile height, a compile-time constant in the body).
template <int Tile = kRows, typename Body>
void over_tiles(int64_t n, Body body) {
  int64_t i0 = 0;
  for (; i0 + Tile <= n; i0 += Tile) body(std::integral_constant<int, Tile>{}, i0);
  for (; i0 < n; ++i0) body(std::integral_constant<int, 1>{}, i0);
}

// dst (d x n, rows of n) = src (n x d, rows of stride src_row) transposed: 8x8 register blocks
// (AVX2) where the sizes allow, ATen's transpose otherwise (vectorised on AVX-512, scalar else).
void transpose_rows(const float* src, int64_t src_row, float* dst, int64_t n, int64_t d) {
#if defined(CPU_CAPABILITY_AVX2)
  if (n % 8 == 0 && d % 8 == 0) {
    for (int64_t j = 0; j < n; j += 8)
      for (int64_t c = 0; c < d; c += 8)
        at::vec::transpose_mxn<float, 8, 8>(src + j * src_row + c, src_row, dst + c * n + j, n);
    return;
  }
#endif
  at::vec::transpose_mxn<float>(src, src_row, dst, n, n, d);
}

// A tensor's strides, copied out (read in the kernels' inner loops).
std::vector<int64_t> strides(const at::Tensor& t) {
  return std::vector<int64_t>(t.strides().begin(), t.strides().end());
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

// Asks for the cache lines of (window b, head h)'s n rows of d floats in a (B, H, N, D) tensor
// (strides st) ahead of their use: the next (window, head)'s rows, strided views of the
// projection's output, would otherwise come from memory one row at a time on first touch.
inline void prefetch_head(const float* x, const std::vector<int64_t>& st, int64_t b, int64_t h,
                          int64_t n, int64_t d) {
  constexpr int64_t kLine = 64 / sizeof(float);
  const float* rows = x + b * st[0] + h * st[1];
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; c += kLine) __builtin_prefetch(rows + i * st[2] + c, 0, 3);
}

template <typename Mask>
void attend_all(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& member, const at::Tensor& bias, double scale,
                const at::Tensor& heads_scale, at::Tensor& out, float* lse) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const bool has_bias = bias.defined(), cosine = heads_scale.defined();
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const Mask* mp = member.data_ptr<Mask>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  const float* hp = cosine ? heads_scale.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const auto qs = strides(q), ks = strides(k), vs = strides(v), ms = strides(member),
             os = strides(out), bs = has_bias ? strides(bias) : ms;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q_scaled(N * D), kt(D * N), logits(kRows * N), k_inverse(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      if (bh + 1 < end) {  // the next (window, head)'s rows, while this one computes
        const int64_t nb = (bh + 1) / H, nh = (bh + 1) % H;
        prefetch_head(qp, qs, nb, nh, N, D);
        prefetch_head(kp, ks, nb, nh, N, D);
        prefetch_head(vp, vs, nb, nh, N, D);
      }
      const float* qh = qp + b * qs[0] + h * qs[1];
      const float* kh = kp + b * ks[0] + h * ks[1];
      transpose_rows(kh, ks[2], kt.data(), N, D);  // k transposed (cosine: then normalised)
      if (cosine) {
        for (int64_t j = 0; j < N; ++j) k_inverse[j] = inverse_norm(kh + j * ks[2], D);
        for (int64_t c = 0; c < D; ++c) {
          for (int64_t j0 = 0; j0 < N; j0 += Vec::size()) {
            const int64_t w = std::min<int64_t>(Vec::size(), N - j0);
            (Vec::loadu(kt.data() + c * N + j0, w) * Vec::loadu(k_inverse.data() + j0, w))
                .store(kt.data() + c * N + j0, w);
          }
        }
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
      float* lh = lse == nullptr ? nullptr : lse + bh * N;
      over_tiles(N, [&](auto rows, int64_t i0) {
        attend_rows<decltype(rows)::value>(i0, q_scaled.data(), kt.data(), vh, vs[2], mh, ms[2],
                                           bh_bias, bs[2], oh, os[2], logits.data(), lh, N, D);
      });
    }
  });
}

// The mask and the bias of (B, H, N, N) attention, expanded and checked, and the cosine head
// scales as a contiguous float32 (H,) tensor (undefined without): shared by the passes.
struct AttentionTerms {
  at::Tensor member, bias, heads_scale;
};

AttentionTerms expanded_terms(const at::Tensor& q, const at::Tensor& mask,
                              const c10::optional<at::Tensor>& bias,
                              const c10::optional<at::Tensor>& head_scale) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2);
  AttentionTerms out;
  if (head_scale.has_value() && head_scale->defined()) {
    out.heads_scale = head_scale->to(at::kFloat).contiguous();
    TORCH_CHECK(out.heads_scale.numel() == H, "head_scale must hold one value per head");
  }
  out.member = (mask.dim() == 3 ? mask.unsqueeze(1) : mask).expand({B, H, N, N});
  if (bias.has_value() && bias->defined()) out.bias = bias->expand({B, H, N, N});
  TORCH_CHECK(out.member.scalar_type() == at::kFloat || out.member.scalar_type() == at::kBool,
              "mask must be bool (membership) or float32 (additive)");
  TORCH_CHECK(!out.bias.defined() || out.bias.scalar_type() == at::kFloat, "bias must be float32");
  TORCH_CHECK(out.member.stride(3) == 1 && (!out.bias.defined() || out.bias.stride(3) == 1),
              "mask and bias need unit-stride rows");
  return out;
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == at::kFloat && k.sizes() == q.sizes() &&
                  v.sizes() == q.sizes() && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat,
              "q, k and v must be float32 tensors of one (B, H, N, D) shape");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "q, k and v need unit-stride rows");
}

// The forward of masked_attention and masked_attention_lse; lse: (B, H, N) or undefined.
at::Tensor attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& mask, const c10::optional<at::Tensor>& bias,
                             double scale, const c10::optional<at::Tensor>& head_scale,
                             at::Tensor lse) {
  check_qkv(q, k, v);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const AttentionTerms terms = expanded_terms(q, mask, bias, head_scale);
  auto out = at::empty({B, N, H, D}, q.options()).permute({0, 2, 1, 3});  // (B, H, N, D)
  float* lp = lse.defined() ? lse.data_ptr<float>() : nullptr;
  if (terms.member.scalar_type() == at::kBool) {
    attend_all<bool>(q, k, v, terms.member, terms.bias, scale, terms.heads_scale, out, lp);
  } else {
    attend_all<float>(q, k, v, terms.member, terms.bias, scale, terms.heads_scale, out, lp);
  }
  return out;
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
  return attention_forward(q, k, v, mask, bias, scale, head_scale, at::Tensor());
}

// masked_attention for training: also the (B, H, N) float32 log-sum-exp of each query's
// logits, which masked_attention_backward recomputes the probabilities from.
std::tuple<at::Tensor, at::Tensor> masked_attention_lse(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, const at::Tensor& mask,
                                                        const c10::optional<at::Tensor>& bias,
                                                        double scale,
                                                        const c10::optional<at::Tensor>& head_scale) {
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  at::Tensor out = attention_forward(q, k, v, mask, bias, scale, head_scale, lse);
  return {out, lse};
}

// acc[r][u] = sum_c a[(i0 + r) * a_row + c] bt[c * n + j0 + u W ...]: an R x U block of vectors
// of a product with a transposed operand bt (D x N, rows of n), each a entry broadcast once for
// its U vectors (w: the lanes of a lone vector, U = 1).
template <int R, int U>
void product_block(int64_t i0, const float* a, int64_t a_row, const float* bt, int64_t n,
                   int64_t j0, int64_t w, int64_t d, Vec (&acc)[R][U]) {
  constexpr int64_t W = Vec::size();
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < U; ++u) acc[r][u] = Vec(0.0f);
  for (int64_t c = 0; c < d; ++c) {
    Vec b[U];
    for (int u = 0; u < U; ++u) b[u] = Vec::loadu(bt + c * n + j0 + u * W, U == 1 ? w : W);
    for (int r = 0; r < R; ++r) {
      const Vec x(a[(i0 + r) * a_row + c]);
      for (int u = 0; u < U; ++u) acc[r][u] = at::vec::fmadd(x, b[u], acc[r][u]);
    }
  }
}

// Backward rows i0 .. i0+R-1 of one (window, head): the probabilities p = exp(scale q k^T + mask
// + bias - lse) and the logits' gradients ds = p * (g v^T - delta), both R x N rows of the
// (N x N) scratches; returns sum ds * (q k^T), the gradient of the scale. q and k are the rows
// the logits were made of (cosine: normalised), kt and vt are k and v transposed (D x N); q and g
// (the output's gradient) rows of stride q_row and g_row; delta[i] = g_i . out_i. Columns go
// two vectors at a time (R x 2 accumulators per product: each broadcast feeds two FMAs).
template <int R, typename Mask>
float probabilities_and_logit_grads(int64_t i0, const float* q, int64_t q_row, const float* g,
                                    int64_t g_row, const float* kt, const float* vt,
                                    const Mask* mask, int64_t mask_row, const float* bias,
                                    int64_t bias_row, const float* lse, const float* delta,
                                    float scale, float* p, float* ds, int64_t n, int64_t d) {
  constexpr int64_t W = Vec::size();
  const Vec zero(0.0f);
  Vec scale_grad = zero;
  const auto finish = [&](int64_t i, int64_t j0, int64_t w, const Vec& logit, const Vec& grad) {
    Vec x = at::vec::fmadd(logit, Vec(scale), mask_at(mask + i * mask_row, j0, w));
    if (bias != nullptr) x = x + Vec::loadu(bias + i * bias_row + j0, w);
    const Vec pr = exp_nonpositive(x - Vec(lse[i]));  // 0 off the dictionary
    const Vec dsr = Vec::set(zero, pr * (grad - Vec(delta[i])), w);  // the tail: 0
    pr.store(p + i * n + j0, w);
    dsr.store(ds + i * n + j0, w);
    scale_grad = at::vec::fmadd(dsr, logit, scale_grad);
  };
  int64_t j0 = 0;
  for (; j0 + 2 * W <= n; j0 += 2 * W) {
    Vec logit[R][2], grad[R][2];
    product_block<R, 2>(i0, q, q_row, kt, n, j0, W, d, logit);
    product_block<R, 2>(i0, g, g_row, vt, n, j0, W, d, grad);
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 2; ++u) finish(i0 + r, j0 + u * W, W, logit[r][u], grad[r][u]);
  }
  for (; j0 < n; j0 += W) {
    const int64_t w = std::min(W, n - j0);
    Vec logit[R][1], grad[R][1];
    product_block<R, 1>(i0, q, q_row, kt, n, j0, w, d, logit);
    product_block<R, 1>(i0, g, g_row, vt, n, j0, w, d, grad);
    for (int r = 0; r < R; ++r) finish(i0 + r, j0, w, logit[r][0], grad[r][0]);
  }
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, scale_grad);
}

// out[i0 + r] = factor * sum_t a(i0 + r, t) b[t] for R rows, with an N x N operand read through
// strides, a(r, t) = a[r * a_row + t * a_inner] (a row-major matrix: n, 1; its transpose: 1, n),
// and b's rows (D-vectors) of stride b_row.
template <int R>
void weighted_rows(int64_t i0, const float* a, int64_t a_row, int64_t a_inner, const float* b,
                   int64_t b_row, float factor, float* out, int64_t out_row, int64_t n,
                   int64_t d) {
  constexpr int64_t W = Vec::size();
  for (int64_t c0 = 0; c0 < d; c0 += W) {
    const int64_t w = std::min(W, d - c0);
    Vec acc[R];
    for (int r = 0; r < R; ++r) acc[r] = Vec(0.0f);
    for (int64_t t = 0; t < n; ++t) {
      const Vec bt = Vec::loadu(b + t * b_row + c0, w);
      const float* at = a + t * a_inner;
      for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec(at[(i0 + r) * a_row]), bt, acc[r]);
    }
    for (int r = 0; r < R; ++r) (acc[r] * Vec(factor)).store(out + (i0 + r) * out_row + c0, w);
  }
}


// Rows x_i / max(|x_i|, eps) of an N x D matrix (rows of stride x_row) into a contiguous N x D
// scratch, with each row's 1 / max(|x_i|, eps) (negative where the norm was clamped to eps).
void normalise_rows(const float* x, int64_t x_row, float* normed, float* inverse, int64_t n,
                    int64_t d) {
  constexpr int64_t W = Vec::size();
  for (int64_t i = 0; i < n; ++i) {
    const float inv = inverse_norm(x + i * x_row, d);
    inverse[i] = inv < 1e12f ? inv : -inv;  // 1e12 = 1 / eps: the clamp's gradient is 0
    for (int64_t c0 = 0; c0 < d; c0 += W) {
      const int64_t w = std::min(W, d - c0);
      (Vec::loadu(x + i * x_row + c0, w) * Vec(inv)).store(normed + i * d + c0, w);
    }
  }
}

// Through x_hat = x / max(|x|, eps): dx = (dx_hat - x_hat (x_hat . dx_hat)) / |x|, or
// dx_hat / eps where the norm was clamped. In place on rows of stride grad_row.
void normalise_rows_backward(const float* normed, const float* inverse, float* grad,
                             int64_t grad_row, int64_t n, int64_t d) {
  constexpr int64_t W = Vec::size();
  for (int64_t i = 0; i < n; ++i) {
    float* gi = grad + i * grad_row;
    const float* xi = normed + i * d;
    const bool clamped = inverse[i] < 0.0f;
    float along = 0.0f;
    if (!clamped) {
      Vec acc(0.0f);
      for (int64_t c0 = 0; c0 < d; c0 += W) {
        const int64_t w = std::min(W, d - c0);
        acc = at::vec::fmadd(Vec::loadu(xi + c0, w), Vec::loadu(gi + c0, w), acc);
      }
      along = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
    }
    const Vec inv(std::abs(inverse[i])), dot(along);
    for (int64_t c0 = 0; c0 < d; c0 += W) {
      const int64_t w = std::min(W, d - c0);
      const Vec gc = Vec::loadu(gi + c0, w);
      ((gc - Vec::loadu(xi + c0, w) * dot) * inv).store(gi + c0, w);
    }
  }
}

// Gradients of masked_attention_lse's output with respect to q, k, v, the bias and the cosine
// head scales, recomputing the probabilities from the log-sum-exp (FlashAttention-2's backward,
// one (window, head) at a time with its N x N probabilities in a scratch):
//   p = exp(s q k^T + mask + bias - lse), dv = p^T g, ds = p * (g v^T - rowsum(g * out)),
//   dq = s ds k, dk = s ds^T q, dbias = ds summed over the dims the bias broadcasts, and with
//   cosine attention (q, k normalised, s the head's scale) ds_scale = sum ds * (q k^T) and the
//   normalisation's backward on dq and dk.
// dq, dk and dv are written into dqkv (B, N, 3, H, D): the layout of a packed qkv projection.
// Windows are split into fixed groups (at most 4 per thread), each summing the gradients of a
// shared bias and of the head scales into its own slice, added in group order: reproducible at
// a given thread count.
template <typename Mask>
void attention_backward(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k,
                        const at::Tensor& v, const at::Tensor& member, const at::Tensor& bias,
                        const at::Tensor& out, const at::Tensor& lse, double scale,
                        const at::Tensor& heads_scale, at::Tensor& dqkv, at::Tensor& bias_partial,
                        at::Tensor& scale_partial, int64_t bias_batch, int64_t bias_heads,
                        int64_t groups) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const bool cosine = heads_scale.defined();
  const auto gs = strides(g), qs = strides(q), ks = strides(k), vs = strides(v), os = strides(out),
             ms = strides(member), bs = bias.defined() ? strides(bias) : ms;
  const float *gp = g.data_ptr<float>(), *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(),
              *vp = v.data_ptr<float>(), *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  const float* hp = cosine ? heads_scale.data_ptr<float>() : nullptr;
  const Mask* mp = member.data_ptr<Mask>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* dp = dqkv.data_ptr<float>();
  float* pp = bias_partial.defined() ? bias_partial.data_ptr<float>() : nullptr;
  float* sp = scale_partial.defined() ? scale_partial.data_ptr<float>() : nullptr;
  const int64_t per_group = (B + groups - 1) / groups, d_row = 3 * H * D;  // dqkv's row stride
  constexpr int64_t W = Vec::size();
  at::parallel_for(0, groups, 1, [&](int64_t first, int64_t last) {
    std::vector<float> kt(D * N), vt(D * N), p(N * N), ds(N * N), delta(N);
    std::vector<float> qn(cosine ? N * D : 0), kn(cosine ? N * D : 0), q_inv(N), k_inv(N);
    for (int64_t group = first; group < last; ++group) {
      const int64_t group_end = std::min(B, (group + 1) * per_group);
      for (int64_t b = group * per_group; b < group_end; ++b) {
        for (int64_t h = 0; h < H; ++h) {
          const int64_t nb = h + 1 < H ? b : b + 1, nh = h + 1 < H ? h + 1 : 0;
          if (nb < group_end) {  // the next (window, head)'s rows, while this one computes
            prefetch_head(qp, qs, nb, nh, N, D);
            prefetch_head(kp, ks, nb, nh, N, D);
            prefetch_head(vp, vs, nb, nh, N, D);
            prefetch_head(gp, gs, nb, nh, N, D);
            prefetch_head(op, os, nb, nh, N, D);
          }
          const float* gh = gp + b * gs[0] + h * gs[1];
          const float* oh = op + b * os[0] + h * os[1];
          const float* vh = vp + b * vs[0] + h * vs[1];
          // the rows the logits were made of: normalised (cosine) or as given
          const float* qh = qp + b * qs[0] + h * qs[1];
          const float* kh = kp + b * ks[0] + h * ks[1];
          int64_t q_row = qs[2], k_row = ks[2];
          float s = static_cast<float>(scale);
          if (cosine) {
            normalise_rows(qh, q_row, qn.data(), q_inv.data(), N, D);
            normalise_rows(kh, k_row, kn.data(), k_inv.data(), N, D);
            qh = qn.data(), kh = kn.data(), q_row = k_row = D, s = hp[h];
          }
          transpose_rows(kh, k_row, kt.data(), N, D);
          transpose_rows(vh, vs[2], vt.data(), N, D);
          for (int64_t i = 0; i < N; ++i) {  // delta_i = g_i . out_i
            Vec acc(0.0f);
            for (int64_t c0 = 0; c0 < D; c0 += W) {
              const int64_t w = std::min(W, D - c0);
              acc = at::vec::fmadd(Vec::loadu(gh + i * gs[2] + c0, w),
                                   Vec::loadu(oh + i * os[2] + c0, w), acc);
            }
            delta[i] = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc);
          }
          const Mask* mh = mp + b * ms[0] + h * ms[1];
          const float* bh_bias = bp == nullptr ? nullptr : bp + b * bs[0] + h * bs[1];
          const float* lh = lp + (b * H + h) * N;
          float scale_grad = 0.0f;
          over_tiles<kGradRows>(N, [&](auto rows, int64_t i0) {
            scale_grad += probabilities_and_logit_grads<decltype(rows)::value>(
                i0, qh, q_row, gh, gs[2], kt.data(), vt.data(), mh, ms[2], bh_bias, bs[2], lh,
                delta.data(), s, p.data(), ds.data(), N, D);
          });
          float* dqh = dp + b * N * d_row + h * D;  // row i of dq: dqh + i * d_row
          float* dkh = dqh + H * D;
          float* dvh = dkh + H * D;
          over_tiles(N, [&](auto rows, int64_t i0) {  // dq = s ds k, dk = s ds^T q, dv = p^T g
            constexpr int R = decltype(rows)::value;
            weighted_rows<R>(i0, ds.data(), N, 1, kh, k_row, s, dqh, d_row, N, D);
            weighted_rows<R>(i0, ds.data(), 1, N, qh, q_row, s, dkh, d_row, N, D);
            weighted_rows<R>(i0, p.data(), 1, N, gh, gs[2], 1.0f, dvh, d_row, N, D);
          });
          if (cosine) {  // through the normalisation, to the given q and k
            normalise_rows_backward(qn.data(), q_inv.data(), dqh, d_row, N, D);
            normalise_rows_backward(kn.data(), k_inv.data(), dkh, d_row, N, D);
          }
          if (sp != nullptr) sp[group * H + h] += scale_grad;
          if (pp != nullptr) {  // the bias gradient: this group's (or window's) slice += ds
            const int64_t slot =
                (bias_batch == 1 ? group : b) * bias_heads + (bias_heads == 1 ? 0 : h);
            float* target = pp + slot * N * N;
            for (int64_t e0 = 0; e0 < N * N; e0 += W) {
              const int64_t w = std::min(W, N * N - e0);
              (Vec::loadu(target + e0, w) + Vec::loadu(ds.data() + e0, w)).store(target + e0, w);
            }
          }
        }
      }
    }
  });
}

// Returns dqkv (B, N, 3, H, D) (dq, dk, dv; the layout of a packed qkv projection), the bias's
// gradient in its own (B|1, H|1, N, N) or (H, N, N) shape and the head scales' (H,) (empty
// tensors where not asked for).
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& mask, const c10::optional<at::Tensor>& bias, const at::Tensor& out,
    const at::Tensor& lse, double scale, const c10::optional<at::Tensor>& head_scale,
    bool bias_grad, bool head_scale_grad) {
  check_qkv(q, k, v);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes() &&
                  grad_out.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat &&
                  grad_out.stride(3) == 1 && out.stride(3) == 1,
              "grad_out and out must be float32 (B, H, N, D) tensors with unit-stride rows");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({B, H, N}) && lse.scalar_type() == at::kFloat &&
                  lse.is_contiguous(),
              "lse must be a contiguous float32 (B, H, N) tensor");
  const AttentionTerms terms = expanded_terms(q, mask, bias, head_scale);
  TORCH_CHECK(!bias_grad || terms.bias.defined(), "bias_grad needs a bias");
  TORCH_CHECK(!head_scale_grad || terms.heads_scale.defined(),
              "head_scale_grad needs a head_scale");
  auto dqkv = at::empty({B, N, 3, H, D}, q.options());
  int64_t bias_batch = 1, bias_heads = 1;
  if (bias_grad) {
    bias_heads = bias->dim() == 4 ? bias->size(1) : bias->size(0);
    bias_batch = bias->dim() == 4 ? bias->size(0) : 1;
  }
  // Up to 4 groups per thread (load balance), fewer where a shared bias's per-group gradient
  // slices would pass 64 MiB (large N), never fewer than the threads.
  const int64_t threads = at::get_num_threads();
  const int64_t slices = (int64_t{64} << 20) / (bias_heads * N * N * 4);
  const int64_t groups = std::max<int64_t>(
      1, std::min<int64_t>(B, std::max<int64_t>(threads, std::min<int64_t>(4 * threads, slices))));
  at::Tensor bias_partial, scale_partial, dbias = at::empty({0}, q.options()),
                                          dscale = at::empty({0}, q.options());
  if (bias_grad) {  // a shared bias sums into one slice per group; a per-window one into its own
    bias_partial = at::zeros({bias_batch == 1 ? groups : B, bias_heads, N, N}, q.options());
  }
  if (head_scale_grad) scale_partial = at::zeros({groups, H}, q.options());
  if (terms.member.scalar_type() == at::kBool) {
    attention_backward<bool>(grad_out, q, k, v, terms.member, terms.bias, out, lse, scale,
                             terms.heads_scale, dqkv, bias_partial, scale_partial, bias_batch,
                             bias_heads, groups);
  } else {
    attention_backward<float>(grad_out, q, k, v, terms.member, terms.bias, out, lse, scale,
                              terms.heads_scale, dqkv, bias_partial, scale_partial, bias_batch,
                              bias_heads, groups);
  }
  if (bias_grad) {
    dbias = bias_batch == 1 ? bias_partial.sum(0, /*keepdim=*/true) : bias_partial;
    if (bias->dim() == 3) dbias = dbias.squeeze(0);
  }
  if (head_scale_grad) dscale = scale_partial.sum(0).view(head_scale->sizes());
  return {dqkv, dbias, dscale};
}

}  // namespace

TORCH_LIBRARY(common_kernels_cpu, m) {
  m.def(
      "masked_attention(Tensor q, Tensor k, Tensor v, Tensor mask, Tensor? bias, float scale, "
      "Tensor? head_scale) -> Tensor");
  m.impl("masked_attention", c10::DispatchKey::CPU, &masked_attention);
  m.def(
      "masked_attention_lse(Tensor q, Tensor k, Tensor v, Tensor mask, Tensor? bias, float scale, "
      "Tensor? head_scale) -> (Tensor, Tensor)");
  m.impl("masked_attention_lse", c10::DispatchKey::CPU, &masked_attention_lse);
  m.def(
      "masked_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor mask, "
      "Tensor? bias, Tensor out, Tensor lse, float scale, Tensor? head_scale, bool bias_grad, "
      "bool head_scale_grad) -> (Tensor, Tensor, Tensor)");
  m.impl("masked_attention_backward", c10::DispatchKey::CPU, &masked_attention_backward);
}
