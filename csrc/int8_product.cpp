// The C++ decode step's product with a weight-only int8 matrix: integer arithmetic on int16
// activations.
//
// Widening each int8 weight to fp32 in registers (sign-extend, convert, FMA) bounded the step on
// AVX2, not memory: 10-12 GB/s of weights where a plain read of the same bytes streams 20-25 GB/s
// on a 2-core AVX2 EPYC. So the activations are rounded to int16 instead, once per row
// (x ~ sx x16 with sx = max|x| / 32767), and the product is integer. The matrix comes packed in row
// pairs, so that one vpmaddwd multiplies eight columns of two rows by the pair's two activations
// and adds the two products: 16 multiply-adds, and a stream at the speed of a plain read
// (measured 1.8x the widening loop). Every kPairsPerFlush pairs the int32 sums are added into fp32
// ones; a row's sx and a column's scale are applied once, at the end.
//
// What the rounding costs: each activation moves by at most sx / 2 = max|x| / 65534, where int8
// moves each weight by up to its column's max|w| / 254, so the error it adds is about 1/250 of
// int8's own. The integer sums are exact, so the result does not depend on the instruction set or
// on the order of the pairs (the fp32 flushes and the threads' partial sums still round).
#include "int8_product.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>

namespace jukebox_fast {
namespace {

constexpr int64_t kSamples = 4;  // rows of x per pass over the matrix
// |int32 sum| over 128 pairs < 2 * 128 * 32767 * 128 < 2^31, even for an int8 of -128.
constexpr int64_t kPairsPerFlush = 128;
// Below this many weights a part of the matrix stays on one thread (fork-join costs more).
constexpr int64_t kWeightsPerPart = 1 << 16;
constexpr float kTop = 32767.f;  // the int16 an activation of the row's largest magnitude becomes

// acc[r, j] += x2[r, p] . q2[p, j] (two int16 products) over pairs p in [p0, p1) and columns
// j >= j0, for r < n: x2 rows ldx pairs apart, each pair's even row in its low 16 bits; q2 the packed
// matrix, a pair's row 2J bytes (column j's two weights adjacent).
void pairs_scalar(const int32_t* x2, int64_t ldx, const int8_t* q2, int64_t J, int32_t* acc, int64_t n, int64_t p0,
                  int64_t p1, int64_t j0) {
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t r = 0; r < n; ++r) {
      const int32_t both = x2[r * ldx + p];
      const int32_t even = static_cast<int16_t>(both & 0xffff), odd = both >> 16;
      const int8_t* q = q2 + p * 2 * J;
      for (int64_t j = j0; j < J; ++j) acc[r * J + j] += q[2 * j] * even + q[2 * j + 1] * odd;
    }
}

// pairs_scalar over pairs [0, count) and every column for S (1 or 2) rows of x2 and acc: four pairs
// and eight columns at a time, each accumulator vector loaded and stored once per eight weight rows,
// the rows' activations broadcast once per four pairs (S = 4 would not fit them in registers; a
// second pass over the same four pairs finds them in L1).
template <int S>
__attribute__((target("avx2"))) void pairs_avx2(const int32_t* x2, int64_t ldx, const int8_t* q2, int64_t J,
                                                 int32_t* acc, int64_t count) {
  int64_t p = 0;
  for (; p + 4 <= count; p += 4) {
    const int8_t* q = q2 + p * 2 * J;
    __m256i x[S][4];  // row s's activations of pair p + t, both halves, in every lane
    for (int s = 0; s < S; ++s)
      for (int t = 0; t < 4; ++t) x[s][t] = _mm256_set1_epi32(x2[s * ldx + p + t]);
    int64_t j = 0;
    for (; j + 8 <= J; j += 8) {
      __m256i v[S];
      for (int s = 0; s < S; ++s) v[s] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + s * J + j));
      for (int t = 0; t < 4; ++t) {  // pair p + t's columns j..j+7 as int16, [column][row of the pair]
        const __m256i w =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + t * 2 * J + 2 * j)));
        for (int s = 0; s < S; ++s) v[s] = _mm256_add_epi32(v[s], _mm256_madd_epi16(w, x[s][t]));
      }
      for (int s = 0; s < S; ++s) _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + s * J + j), v[s]);
    }
    if (j < J) pairs_scalar(x2, ldx, q2, J, acc, S, p, p + 4, j);
  }
  pairs_scalar(x2, ldx, q2, J, acc, S, p, count, 0);
}

// Two rows at a time. In a standalone loop over 48 MB of int8 on both threads, against one pass
// over all the rows with the broadcasts reloaded for every eight columns: 1.15-1.40x at 4 rows
// (three runs), 1.10-1.13x at 1 row (two).
void pairs(const int32_t* x2, int64_t ldx, const int8_t* q2, int64_t J, int32_t* acc, int64_t n, int64_t count) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (!avx2) return pairs_scalar(x2, ldx, q2, J, acc, n, 0, count, 0);
  int64_t r = 0;
  for (; r + 2 <= n; r += 2) pairs_avx2<2>(x2 + r * ldx, ldx, q2, J, acc + r * J, count);
  if (r < n) pairs_avx2<1>(x2 + r * ldx, ldx, q2, J, acc + r * J, count);
}

// Row n of x [N, K] as int16 pairs x2[n, :ceil(K/2)] and its scale sx[n]; a row holding a NaN or
// an infinity gets sx = NaN, so its outputs are NaN, as the fp32 product's would be.
void round_rows(const float* x, int64_t K, int64_t N, int32_t* x2, float* sx) {
  const int64_t P = (K + 1) / 2;
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * K;
    float top = 0.f;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
      finite = finite && std::isfinite(xr[k]);
      top = std::max(top, std::fabs(xr[k]));
    }
    sx[n] = finite ? top / kTop : NAN;
    const float inv = finite && top > 0.f ? kTop / top : 0.f;
    auto to16 = [&](int64_t k) -> uint32_t {
      if (k >= K) return 0;  // the zero row after an odd K
      const float v = std::clamp(std::nearbyint(xr[k] * inv), -kTop, kTop);
      return static_cast<uint16_t>(static_cast<int16_t>(v));
    };
    for (int64_t p = 0; p < P; ++p) x2[n * P + p] = static_cast<int32_t>(to16(2 * p) | (to16(2 * p + 1) << 16));
  }
}

}  // namespace

void int8_linear(const float* x, int64_t K, const int8_t* q2, int64_t J, const float* scale, const float* b, float* y,
                 int64_t N) {
  const int64_t P = (K + 1) / 2;
  std::vector<int32_t> x2(N * P);  // [N, P]
  std::vector<float> sx(N);
  round_rows(x, K, N, x2.data(), sx.data());
  // Threads take runs of whole pairs (each run read once, in address order) into sums of their own,
  // added in thread order at the end.
  const int64_t parts = std::clamp<int64_t>(P * 2 * J / kWeightsPerPart, 1, std::min<int64_t>(at::get_num_threads(), P));
  std::vector<float> sums(parts * kSamples * J);       // [parts, kSamples, J]
  std::vector<int32_t> exact(parts * kSamples * J);    // the same, int32 since the last flush
  for (int64_t r0 = 0; r0 < N; r0 += kSamples) {
    const int64_t n = std::min(kSamples, N - r0);
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        float* f = sums.data() + t * kSamples * J;
        int32_t* e = exact.data() + t * kSamples * J;
        std::fill(f, f + n * J, 0.f);
        for (int64_t c = P * t / parts, last = P * (t + 1) / parts; c < last; c += kPairsPerFlush) {
          std::fill(e, e + n * J, 0);
          pairs(x2.data() + r0 * P + c, P, q2 + c * 2 * J, J, e, n, std::min(kPairsPerFlush, last - c));
          for (int64_t i = 0; i < n * J; ++i) f[i] += static_cast<float>(e[i]);
        }
      }
    });
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < J; ++j) {
        float s = 0.f;
        for (int64_t t = 0; t < parts; ++t) s += sums[(t * kSamples + r) * J + j];
        y[(r0 + r) * J + j] = s * (sx[r0 + r] * scale[j]) + b[j];
      }
  }
}

}  // namespace jukebox_fast
