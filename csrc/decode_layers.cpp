// One position through a stack of pre-LN transformer layers on the CPU, reading and writing each
// layer's static KV cache: the C++ implementation of the `decode_layers` op
// (jukebox_fast/ops/decode_layers.py holds the reference and the argument layout).
//
// Per layer, for the N samples' rows x [N, W] (weights in the original's Conv1D layout [in, out];
// the four projection matrices fp32, fp16 or bf16, streamed as stored and widened in registers,
// with fp32 accumulation, or int8 with one fp32 scale per output column, packed in row pairs and
// multiplied in integers (int8_product.cpp)):
//   h = LN0(x);  q | k | v = h Wa + ba;  k, v -> the cache slot of this position
//   a = softmax(q K[lo:hi]^T scale) V[lo:hi] per head;  a = a Wp + bp
//   m = quick_gelu(LN1(x + a) Wf + bf) Wm + bm;  x = x + a + m  (or x + rs (a + m))
//
// A decode step is a chain of matrix-vector products whose weights are read once per step, so it
// runs at the speed weights stream from cache/memory. BLAS's small-m GEMM re-packs every weight
// for each call (2.5x slower than streaming at m = 4); `rows_times` streams each weight tile once
// for up to kRows samples. The whole stack is one call, so Python pays for one op per step.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "int8_product.h"

namespace jukebox_fast {
namespace {

constexpr int64_t kRows = 4;   // samples per register tile
constexpr int64_t kCols = 64;  // output columns per register tile: kRows x kCols fp32 accumulators
// Below this many weights (or keys x head width) a product stays on one thread: at width 256 the
// fork-join of smaller splits measured no faster than one core.
constexpr int64_t kWeightsPerTask = 1 << 16;
constexpr int64_t kWeightsPerLayer = 12;      // see WEIGHT_NAMES in ops/decode_layers.py
constexpr int64_t kMatrices = 4;              // the projections, in that order: one scale slot each
constexpr int64_t kMatrix[kMatrices] = {2, 4, 8, 10};

// acc[r][j] += x[r, :K] w[:K, j] for r < n <= kRows, j < cols <= kCols: x rows ldx apart, w rows
// ldw apart (its first column at w). Compiled once per vector ISA and picked at load time.
__attribute__((target_clones("avx512f", "avx2", "default")))
void accumulate(const float* x, int64_t ldx, const float* w, int64_t ldw, float (*acc)[kCols], int64_t n, int64_t K,
                int64_t cols) {
  if (cols == kCols) {  // full tile: fixed trip counts, so the column loop vectorises
    for (int64_t k = 0; k < K; ++k) {
      const float* wk = w + k * ldw;
      for (int64_t r = 0; r < kRows; ++r) {
        const float xr = r < n ? x[r * ldx + k] : 0.f;
        for (int64_t j = 0; j < kCols; ++j) acc[r][j] += xr * wk[j];
      }
    }
  } else {  // the last, narrower tile (reading kCols columns there would run past w's end)
    for (int64_t k = 0; k < K; ++k) {
      const float* wk = w + k * ldw;
      for (int64_t r = 0; r < n; ++r) {
        const float xr = x[r * ldx + k];
        for (int64_t j = 0; j < cols; ++j) acc[r][j] += xr * wk[j];
      }
    }
  }
}

// 16-bit weights are widened to fp32 kRowsWide rows of the tile at a time (the weight bytes stream
// at half the fp32 step's) and multiplied as above. fp16 widens with the F16C / AVX-512
// conversion instructions where the CPU has them; bf16 is the top half of an fp32.
constexpr int64_t kRowsWide = 32;

__attribute__((target("avx512f"))) void widen_half_avx512(const uint16_t* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  for (; i < count; ++i) dst[i] = c10::detail::fp16_ieee_to_fp32_value(src[i]);
}

__attribute__((target("avx2,f16c"))) void widen_half_avx2(const uint16_t* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < count; ++i) dst[i] = c10::detail::fp16_ieee_to_fp32_value(src[i]);
}

void widen_half(const uint16_t* src, float* dst, int64_t count) {
  static const int isa = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("f16c") ? 1 : 0;
  if (isa == 2) return widen_half_avx512(src, dst, count);
  if (isa == 1) return widen_half_avx2(src, dst, count);
  for (int64_t i = 0; i < count; ++i) dst[i] = c10::detail::fp16_ieee_to_fp32_value(src[i]);
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void widen_bf16(const uint16_t* src, float* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &bits, sizeof(float));
  }
}

// y[r, j0:j0+cols] = b[j0:j0+cols] + x[r, :K] w[:K, j0:j0+cols] for r < n <= kRows; x rows are K
// apart, w (fp32, fp16 or bf16, `type`) rows J apart, y rows J apart.
void rows_times(const float* x, const void* w, at::ScalarType type, const float* b, float* y, int64_t n, int64_t K,
                int64_t J, int64_t j0, int64_t cols) {
  float acc[kRows][kCols] = {};
  if (type == at::kFloat) {
    accumulate(x, K, static_cast<const float*>(w) + j0, J, acc, n, K, cols);
  } else {
    alignas(64) float wide[kRowsWide * kCols];
    for (int64_t k0 = 0; k0 < K; k0 += kRowsWide) {
      const int64_t rows = std::min(kRowsWide, K - k0);
      for (int64_t k = 0; k < rows; ++k) {
        const int64_t at = (k0 + k) * J + j0;
        if (type == at::kBFloat16) widen_bf16(static_cast<const uint16_t*>(w) + at, wide + k * kCols, cols);
        else widen_half(static_cast<const uint16_t*>(w) + at, wide + k * kCols, cols);
      }
      accumulate(x + k0, K, wide, kCols, acc, n, rows, cols);
    }
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < cols; ++j)
      y[r * J + j0 + j] = acc[r][j] + b[j0 + j];
}

// acc[r, :cols] += x[r, k] w[k, :cols] over rows k of one weight row chunk at a time: the
// streaming order for a matrix that does not fit the cache (each row chunk is read once, in
// address order, for all n <= kRows samples; the accumulators stay in L1).
__attribute__((target_clones("avx512f", "avx2", "default")))
void axpy_rows(const float* xk, int64_t ldx, const float* wk, float* acc, int64_t n, int64_t cols) {
  for (int64_t r = 0; r < n; ++r) {
    const float xr = xk[r * ldx];
    float* a = acc + r * cols;
    for (int64_t j = 0; j < cols; ++j) a[j] += xr * wk[j];
  }
}

// As axpy_rows for a 16-bit weight row, widened in registers as it is multiplied: fp16 with the
// F16C / AVX-512 conversion, bf16 as the top half of an fp32 (a shift).
template <bool kBF16>
__attribute__((target("avx512f"))) void axpy_rows_16_avx512(const float* xk, int64_t ldx, const uint16_t* wk,
                                                           float* acc, int64_t n, int64_t cols) {
  int64_t j = 0;
  for (; j + 16 <= cols; j += 16) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + j));
    const __m512 w = kBF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16)) : _mm512_cvtph_ps(raw);
    for (int64_t r = 0; r < n; ++r) {
      float* a = acc + r * cols + j;
      _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(xk[r * ldx]), w, _mm512_loadu_ps(a)));
    }
  }
  for (; j < cols; ++j) {
    const float w = kBF16 ? c10::detail::f32_from_bits(wk[j])
                          : c10::detail::fp16_ieee_to_fp32_value(wk[j]);
    for (int64_t r = 0; r < n; ++r) acc[r * cols + j] += xk[r * ldx] * w;
  }
}

template <bool kBF16>
__attribute__((target("avx2,f16c,fma"))) void axpy_rows_16_avx2(const float* xk, int64_t ldx, const uint16_t* wk,
                                                               float* acc, int64_t n, int64_t cols) {
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wk + j));
    const __m256 w = kBF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16)) : _mm256_cvtph_ps(raw);
    for (int64_t r = 0; r < n; ++r) {
      float* a = acc + r * cols + j;
      _mm256_storeu_ps(a, _mm256_fmadd_ps(_mm256_set1_ps(xk[r * ldx]), w, _mm256_loadu_ps(a)));
    }
  }
  for (; j < cols; ++j) {
    const float w = kBF16 ? c10::detail::f32_from_bits(wk[j])
                          : c10::detail::fp16_ieee_to_fp32_value(wk[j]);
    for (int64_t r = 0; r < n; ++r) acc[r * cols + j] += xk[r * ldx] * w;
  }
}

int stream_isa() {  // 2: AVX-512, 1: AVX2 + F16C + FMA, 0: neither (widen a row, then multiply)
  static const int isa = __builtin_cpu_supports("avx512f") ? 2
                         : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                            __builtin_cpu_supports("fma")) ? 1 : 0;
  return isa;
}

void axpy_rows_16(const float* xk, int64_t ldx, const uint16_t* wk, bool bf16, float* acc, int64_t n, int64_t cols,
                  float* wide) {
  const int isa = stream_isa();
  if (isa == 2) return bf16 ? axpy_rows_16_avx512<true>(xk, ldx, wk, acc, n, cols)
                            : axpy_rows_16_avx512<false>(xk, ldx, wk, acc, n, cols);
  if (isa == 1) return bf16 ? axpy_rows_16_avx2<true>(xk, ldx, wk, acc, n, cols)
                            : axpy_rows_16_avx2<false>(xk, ldx, wk, acc, n, cols);
  if (bf16) widen_bf16(wk, wide, cols);  // a CPU without either: widen the row, then multiply
  else widen_half(wk, wide, cols);
  axpy_rows(xk, ldx, wide, acc, n, cols);
}

// The narrow weight forms a row can be streamed in, widened to fp32 in registers.
enum class Narrow { kHalf, kBF16 };

template <Narrow kForm>
__attribute__((target("avx512f"))) inline __m512 widen16(const void* w, int64_t i) {  // weights i..i+15
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i));
  if constexpr (kForm == Narrow::kBF16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  return _mm512_cvtph_ps(raw);
}

template <Narrow kForm>
__attribute__((target("avx2,f16c"))) inline __m256 widen8(const void* w, int64_t i) {  // weights i..i+7
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
  if constexpr (kForm == Narrow::kBF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  return _mm256_cvtph_ps(raw);
}

template <Narrow kForm>
inline float widen1(const void* w, int64_t i) {
  const uint16_t raw = static_cast<const uint16_t*>(w)[i];
  if constexpr (kForm == Narrow::kBF16) return c10::detail::f32_from_bits(raw);
  return c10::detail::fp16_ieee_to_fp32_value(raw);
}

// Four narrow weight rows k..k+3 at once (w: row k, rows ldw weights apart): each accumulator
// vector is loaded and stored once per four rows, not per row (at batch 1 the row-at-a-time loop
// is bound by those loads and stores, not by the weight bytes).
template <Narrow kForm>
__attribute__((target("avx512f"))) void axpy_rows4_avx512(const float* xk, int64_t ldx, const void* w, int64_t ldw,
                                                         float* acc, int64_t n, int64_t cols) {
  int64_t j = 0;
  for (; j + 16 <= cols; j += 16) {
    __m512 wt[4];
    for (int t = 0; t < 4; ++t) wt[t] = widen16<kForm>(w, t * ldw + j);
    for (int64_t r = 0; r < n; ++r) {
      float* a = acc + r * cols + j;
      __m512 v = _mm512_loadu_ps(a);
      for (int t = 0; t < 4; ++t) v = _mm512_fmadd_ps(_mm512_set1_ps(xk[r * ldx + t]), wt[t], v);
      _mm512_storeu_ps(a, v);
    }
  }
  for (; j < cols; ++j)
    for (int t = 0; t < 4; ++t)
      for (int64_t r = 0; r < n; ++r) acc[r * cols + j] += xk[r * ldx + t] * widen1<kForm>(w, t * ldw + j);
}

template <Narrow kForm>
__attribute__((target("avx2,f16c,fma"))) void axpy_rows4_avx2(const float* xk, int64_t ldx, const void* w,
                                                              int64_t ldw, float* acc, int64_t n, int64_t cols) {
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    __m256 wt[4];
    for (int t = 0; t < 4; ++t) wt[t] = widen8<kForm>(w, t * ldw + j);
    for (int64_t r = 0; r < n; ++r) {
      float* a = acc + r * cols + j;
      __m256 v = _mm256_loadu_ps(a);
      for (int t = 0; t < 4; ++t) v = _mm256_fmadd_ps(_mm256_set1_ps(xk[r * ldx + t]), wt[t], v);
      _mm256_storeu_ps(a, v);
    }
  }
  for (; j < cols; ++j)
    for (int t = 0; t < 4; ++t)
      for (int64_t r = 0; r < n; ++r) acc[r * cols + j] += xk[r * ldx + t] * widen1<kForm>(w, t * ldw + j);
}

template <Narrow kForm>
void axpy_rows4(const float* xk, int64_t ldx, const void* w, int64_t ldw, float* acc, int64_t n, int64_t cols) {
  if (stream_isa() == 2) axpy_rows4_avx512<kForm>(xk, ldx, w, ldw, acc, n, cols);
  else axpy_rows4_avx2<kForm>(xk, ldx, w, ldw, acc, n, cols);
}

// acc[:n, :J] += x[:n, k0:k1] w[k0:k1, :]: a run of whole weight rows, read in address order.
void stream_rows(const float* x, const void* w, at::ScalarType type, float* acc, int64_t n, int64_t K, int64_t J,
                 int64_t k0, int64_t k1, float* wide) {
  for (int64_t k = k0; k < k1; ++k) {
    if (type == at::kFloat)
      axpy_rows(x + k, K, static_cast<const float*>(w) + k * J, acc, n, J);
    else if (k + 4 <= k1 && stream_isa() > 0) {  // four rows at a time, widened in registers
      const auto* row = static_cast<const uint16_t*>(w) + k * J;
      if (type == at::kBFloat16) axpy_rows4<Narrow::kBF16>(x + k, K, row, J, acc, n, J);
      else axpy_rows4<Narrow::kHalf>(x + k, K, row, J, acc, n, J);
      k += 3;  // four rows done
    } else
      axpy_rows_16(x + k, K, static_cast<const uint16_t*>(w) + k * J, type == at::kBFloat16, acc, n, J, wide);
  }
}

// Above this many weight bytes a matrix streams from memory rather than from the cache: each
// thread then reads a run of whole rows in address order (column tiles would jump a row between
// 256-byte reads) into accumulators of its own, summed in thread order at the end.
constexpr int64_t kStreamBytes = 1 << 20;

// y[N, J] = x[N, K] w[K, J] + b: column tiles shared between threads for a matrix in the cache,
// runs of rows for one streamed from memory. An int8 w (packed in row pairs) is x (w s) + b with
// its column scales s [J], in int8_product.cpp.
void linear(const float* x, int64_t K, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& b, float* y,
            int64_t N) {
  const int64_t J = w.size(1);
  const void* wp = w.const_data_ptr();
  const float* bp = b.const_data_ptr<float>();
  if (w.scalar_type() == at::kChar)
    return int8_linear(x, K, static_cast<const int8_t*>(wp), J, scale.const_data_ptr<float>(), bp, y, N);
  if (K * J * w.element_size() > kStreamBytes) {
    const int64_t parts = std::min<int64_t>(at::get_num_threads(), K);
    std::vector<float> acc(parts * kRows * J), wide(parts * J);
    for (int64_t r0 = 0; r0 < N; r0 += kRows) {
      const int64_t n = std::min(kRows, N - r0);
      std::fill(acc.begin(), acc.end(), 0.f);
      at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t)
          stream_rows(x + r0 * K, wp, w.scalar_type(), acc.data() + t * kRows * J, n, K, J, K * t / parts,
                      K * (t + 1) / parts, wide.data() + t * J);
      });
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < J; ++j) {
          float sum = 0.f;
          for (int64_t t = 0; t < parts; ++t) sum += acc[(t * kRows + r) * J + j];
          y[(r0 + r) * J + j] = sum + bp[j];
        }
    }
    return;
  }
  const int64_t tiles = (J + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, kWeightsPerTask / (K * kCols));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j0 = t * kCols, cols = std::min(kCols, J - j0);
      for (int64_t r0 = 0; r0 < N; r0 += kRows)  // later row groups find the tile in cache
        rows_times(x + r0 * K, wp, w.scalar_type(), bp, y + r0 * J, std::min(kRows, N - r0), K, J, j0, cols);
    }
  });
}

// y[n, :] = LN(x[n, :]) with fp32 statistics accumulated in double.
void layer_norm(const float* x, const at::Tensor& g, const at::Tensor& beta, double eps, float* y, int64_t N,
                int64_t W) {
  const float* gp = g.const_data_ptr<float>();
  const float* bp = beta.const_data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * W;
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < W; ++i) sum += xr[i];
    const double mean = sum / W;
    for (int64_t i = 0; i < W; ++i) sq += (xr[i] - mean) * (xr[i] - mean);
    const float inv = static_cast<float>(1.0 / std::sqrt(sq / W + eps));
    const float m = static_cast<float>(mean);
    for (int64_t i = 0; i < W; ++i) y[n * W + i] = (xr[i] - m) * inv * gp[i] + bp[i];
  }
}

// Where one layer's query reads and writes at the current position (a row of the schedule).
struct Visit {
  int64_t slot, lo, hi;  // slot -1: nothing written (cross-attention)
};

// out[:d] = softmax(q . K[s] * scale over s < span) V: K, V [span, d] rows; w [span] scratch.
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_one(const float* q, const float* K, const float* V, float* out, float* w, int64_t span, int64_t d,
                float scale) {
  float top = -INFINITY;
  for (int64_t s = 0; s < span; ++s) {
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < d; ++i) dot += q[i] * K[s * d + i];
    w[s] = dot * scale;
    top = std::max(top, w[s]);
  }
  float total = 0.f;
  for (int64_t s = 0; s < span; ++s) total += (w[s] = std::exp(w[s] - top));
  std::fill(out, out + d, 0.f);
  for (int64_t s = 0; s < span; ++s) {
    const float p = w[s] / total;
    for (int64_t i = 0; i < d; ++i) out[i] += p * V[s * d + i];
  }
}

// a[n, h*d:(h+1)*d] = attention of sample n's head h over its slots [lo, hi); zeros when none.
// q rows are `ldq` apart; caches are [N, H, slots, d].
void attend(const float* q, int64_t ldq, const float* kc, const float* vc, float* a, int64_t N, int64_t H,
            int64_t slots, int64_t d, Visit visit, float scale) {
  const int64_t span = visit.hi - visit.lo;
  const int64_t grain = std::max<int64_t>(1, kWeightsPerTask / std::max<int64_t>(1, span * d));
  at::parallel_for(0, N * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> w(std::max<int64_t>(span, 1));
    for (int64_t nh = begin; nh < end; ++nh) {
      float* out = a + nh * d;  // row n = nh / H, head h = nh % H: a is [N, H * d]
      if (span == 0) {
        std::fill(out, out + d, 0.f);
        continue;
      }
      const int64_t first = (nh * slots + visit.lo) * d;
      attend_one(q + (nh / H) * ldq + (nh % H) * d, kc + first, vc + first, out, w.data(), span, d, scale);
    }
  });
}

void check_float_cpu(const at::Tensor& t, const char* what, int64_t layer, bool matrix = false) {
  const auto type = t.scalar_type();
  const bool ok = type == at::kFloat || (matrix && (type == at::kHalf || type == at::kBFloat16 || type == at::kChar));
  TORCH_CHECK(t.device().is_cpu() && ok && t.is_contiguous(), "decode_layers (cpp): layer ", layer, "'s ", what,
              " must be a contiguous ", matrix ? "float32, float16, bfloat16 or int8" : "float32", " CPU tensor, got ",
              type, " on ", t.device(), t.is_contiguous() ? "" : " (not contiguous)");
}

// An int8 matrix [K, J] needs its fp32 column scales [J]; any other matrix an empty tensor.
void check_scale(const at::Tensor& s, const at::Tensor& w, const char* what, int64_t layer) {
  if (w.scalar_type() != at::kChar) {
    TORCH_CHECK(s.numel() == 0, "decode_layers (cpp): layer ", layer, "'s ", what, " is ", w.scalar_type(),
                " and takes no scales, got ", s.sizes());
    return;
  }
  TORCH_CHECK(s.dim() == 1 && s.size(0) == w.size(1) && s.scalar_type() == at::kFloat && s.device().is_cpu() &&
                  s.is_contiguous(),
              "decode_layers (cpp): layer ", layer, "'s ", what, " is int8 and needs contiguous float32 CPU scales [",
              w.size(1), "], got ", s.scalar_type(), " ", s.sizes());
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* what, int64_t layer) {
  TORCH_CHECK(t.sizes() == shape, "decode_layers (cpp): layer ", layer, "'s ", what, " must be ", shape,
              ", got ", t.sizes());
}

// A projection [K, J] as the step takes it: as stored, or int8 packed in row pairs [ceil(K/2), J, 2].
void check_matrix(const at::Tensor& w, int64_t K, int64_t J, const char* what, int64_t layer) {
  if (w.scalar_type() != at::kChar) return check_shape(w, {K, J}, what, layer);
  TORCH_CHECK(w.sizes() == at::IntArrayRef({(K + 1) / 2, J, 2}), "decode_layers (cpp): layer ", layer, "'s ", what,
              " is int8 and must come packed in row pairs, [", (K + 1) / 2, ", ", J, ", 2] for [", K, ", ", J,
              "], got ", w.sizes());
}

// Checks a whole layer before any memory is touched, so bad input is an error, never a crash.
// Returns the attention width S (= heads * d) and whether the layer is cross-attention.
std::pair<int64_t, bool> check_layer(const at::Tensor* wt, const at::Tensor* sc, const at::Tensor& kc,
                                     const at::Tensor& vc, int64_t l, int64_t N, int64_t W, int64_t H) {
  static const char* names[kWeightsPerLayer] = {"ln_0.weight", "ln_0.bias", "attn.c_attn.w", "attn.c_attn.b",
                                                "attn.c_proj.w", "attn.c_proj.b", "ln_1.weight", "ln_1.bias",
                                                "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w", "mlp.c_proj.b"};
  for (int64_t i = 0; i < kWeightsPerLayer; ++i) check_float_cpu(wt[i], names[i], l, i == 2 || i == 4 || i == 8 || i == 10);
  check_float_cpu(kc, "key cache", l);
  check_float_cpu(vc, "value cache", l);
  TORCH_CHECK(H >= 1 && kc.dim() == 4 && kc.size(0) == N && kc.size(1) == H && vc.sizes() == kc.sizes(),
              "decode_layers (cpp): layer ", l, "'s caches must be [", N, ", ", H, ", slots, head width], got ",
              kc.sizes(), " and ", vc.sizes());
  TORCH_CHECK(wt[8].dim() >= 2, "decode_layers (cpp): layer ", l, "'s mlp.c_fc.w must be an [in, out] matrix, got ",
              wt[8].sizes());
  const int64_t S = H * kc.size(3), F = wt[8].size(1);  // (column counts sit at index 1 packed or not)
  for (int64_t i : {0, 1, 5, 6, 7, 11}) check_shape(wt[i], {W}, names[i], l);
  check_matrix(wt[4], S, W, names[4], l);
  check_matrix(wt[8], W, F, names[8], l);
  check_shape(wt[9], {F}, names[9], l);
  check_matrix(wt[10], F, W, names[10], l);
  const int64_t J = wt[2].dim() >= 2 && wt[2].size(1) == S ? S : 3 * S;  // cross-attention: k, v come from the cache
  check_matrix(wt[2], W, J, names[2], l);
  check_shape(wt[3], {J}, names[3], l);
  for (int64_t m = 0; m < kMatrices; ++m) check_scale(sc[m], wt[kMatrix[m]], names[kMatrix[m]], l);
  return {S, J == S};
}

void decode_layers_cpu(const at::Tensor& x_in, at::TensorList weights, at::TensorList scales, at::TensorList k_cache,
                       at::TensorList v_cache, const at::Tensor& schedule, at::IntArrayRef heads,
                       at::ArrayRef<double> res_scale, double eps, const at::Tensor& position, at::Tensor& out) {
  const int64_t layers = static_cast<int64_t>(heads.size());
  TORCH_CHECK(x_in.dim() == 2 && x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat,
              "decode_layers (cpp): x must be a float32 CPU tensor [N, width], got ", x_in.scalar_type(), " ",
              x_in.sizes(), " on ", x_in.device());
  TORCH_CHECK(out.sizes() == x_in.sizes() && out.scalar_type() == at::kFloat && out.is_contiguous() &&
                  out.device().is_cpu(),
              "decode_layers (cpp): out must be a contiguous float32 CPU tensor ", x_in.sizes(), ", got ",
              out.scalar_type(), " ", out.sizes());
  TORCH_CHECK(static_cast<int64_t>(scales.size()) == kMatrices * layers, "decode_layers (cpp): for ", layers,
              " layers expected ", kMatrices * layers, " scales (an empty tensor for a matrix that is not int8), got ",
              scales.size());
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == kWeightsPerLayer * layers &&
                  static_cast<int64_t>(k_cache.size()) == layers && static_cast<int64_t>(v_cache.size()) == layers &&
                  static_cast<int64_t>(res_scale.size()) == layers,
              "decode_layers (cpp): for ", layers, " layers (heads) expected ", kWeightsPerLayer * layers,
              " weights and ", layers, " caches and res_scales, got ", weights.size(), ", ", k_cache.size(), ", ",
              v_cache.size(), ", ", res_scale.size());
  TORCH_CHECK(schedule.dim() == 3 && schedule.size(0) == layers && schedule.size(2) == 3 &&
                  schedule.scalar_type() == at::kLong && schedule.device().is_cpu() && schedule.is_contiguous(),
              "decode_layers (cpp): schedule must be a contiguous int64 CPU tensor [", layers,
              ", length, 3], got ", schedule.scalar_type(), " ", schedule.sizes());
  TORCH_CHECK(position.numel() == 1 && position.scalar_type() == at::kLong && position.device().is_cpu(),
              "decode_layers (cpp): position must be a one-element int64 CPU tensor");
  const int64_t p = position.item<int64_t>();
  TORCH_CHECK(p >= 0 && p < schedule.size(1), "decode_layers (cpp): position ", p,
              " is outside the context of ", schedule.size(1), " positions");
  const int64_t N = x_in.size(0), W = x_in.size(1);

  std::vector<int64_t> widths(layers);
  std::vector<bool> cross(layers);
  std::vector<Visit> visits(layers);
  const int64_t* sched = schedule.const_data_ptr<int64_t>();
  int64_t widest = 0, hidden = 0;
  for (int64_t l = 0; l < layers; ++l) {
    const auto [S, is_cross] = check_layer(&weights[kWeightsPerLayer * l], &scales[kMatrices * l], k_cache[l],
                                           v_cache[l], l, N, W, heads[l]);
    widths[l] = S;
    cross[l] = is_cross;
    widest = std::max(widest, S);
    hidden = std::max(hidden, weights[kWeightsPerLayer * l + 8].size(1));
    const int64_t* row = sched + (l * schedule.size(1) + p) * 3;
    const int64_t slots = k_cache[l].size(2);
    visits[l] = {row[0], row[1], row[2]};
    TORCH_CHECK(visits[l].slot >= (is_cross ? -1 : 0) && visits[l].slot < (is_cross ? 0 : slots) &&
                    0 <= visits[l].lo && visits[l].lo <= visits[l].hi && visits[l].hi <= slots,
                "decode_layers (cpp): layer ", l, "'s schedule at position ", p, " is (slot ", visits[l].slot,
                ", ", visits[l].lo, ":", visits[l].hi, "), outside its ", slots, " cache slots",
                is_cross ? " (cross-attention writes no slot: -1)" : "");
  }
  if (N == 0) return;

  // Work rows, [N, ·] each: the running activations, a normalised copy, q|k|v, attention, MLP.
  const at::Tensor x = x_in.contiguous();
  std::vector<float> xs(x.const_data_ptr<float>(), x.const_data_ptr<float>() + N * W);
  std::vector<float> hn(N * W), qkv(N * 3 * widest), att(N * widest), proj(N * W), mid(N * hidden), mlp(N * W);
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* wt = &weights[kWeightsPerLayer * l];
    const at::Tensor* sc = &scales[kMatrices * l];
    const int64_t S = widths[l], H = heads[l], d = S / H, J = wt[2].size(1), F = wt[8].size(1);
    float* kc = k_cache[l].mutable_data_ptr<float>();
    float* vc = v_cache[l].mutable_data_ptr<float>();
    const int64_t slots = k_cache[l].size(2);

    layer_norm(xs.data(), wt[0], wt[1], eps, hn.data(), N, W);
    linear(hn.data(), W, wt[2], sc[0], wt[3], qkv.data(), N);  // [N, J]: q | k | v, heads contiguous in each
    if (!cross[l]) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t h = 0; h < H; ++h) {
          const float* kr = qkv.data() + n * J + S + h * d;
          const int64_t dst = ((n * H + h) * slots + visits[l].slot) * d;
          std::copy(kr, kr + d, kc + dst);
          std::copy(kr + S, kr + S + d, vc + dst);
        }
    }
    attend(qkv.data(), J, kc, vc, att.data(), N, H, slots, d, visits[l], static_cast<float>(1.0 / std::sqrt(d)));
    linear(att.data(), S, wt[4], sc[1], wt[5], proj.data(), N);  // a [N, W]
    for (int64_t i = 0; i < N * W; ++i) hn[i] = xs[i] + proj[i];
    layer_norm(hn.data(), wt[6], wt[7], eps, hn.data(), N, W);
    linear(hn.data(), W, wt[8], sc[2], wt[9], mid.data(), N);  // [N, F]
    for (int64_t i = 0; i < N * F; ++i) mid[i] = mid[i] / (1.f + std::exp(-1.702f * mid[i]));
    linear(mid.data(), F, wt[10], sc[3], wt[11], mlp.data(), N);  // m [N, W]
    const float rs = static_cast<float>(res_scale[l]);
    if (rs == 1.f) {
      for (int64_t i = 0; i < N * W; ++i) xs[i] = xs[i] + proj[i] + mlp[i];
    } else {
      for (int64_t i = 0; i < N * W; ++i) xs[i] = xs[i] + rs * (proj[i] + mlp[i]);
    }
  }
  std::copy(xs.begin(), xs.end(), out.mutable_data_ptr<float>());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jukebox_fast_ext, m) {
  m.def(
      "decode_layers(Tensor x, Tensor[] weights, Tensor[] scales, Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, "
      "Tensor schedule, "
      "int[] heads, float[] res_scale, float eps, Tensor position, Tensor(c!) out) -> ()");
}

TORCH_LIBRARY_IMPL(jukebox_fast_ext, CPU, m) {
  m.impl("decode_layers", &decode_layers_cpu);
}

}  // namespace jukebox_fast
