// The int8 streaming loops the C++ decode step chose between, timed alone: where the numbers in
// csrc/int8_product.cpp's comments and benchmarks/results/decode_weights_cpu.md come from.
//
//   g++ -O3 -fopenmp benchmarks/int8_loops.cpp -o /tmp/int8_loops && /tmp/int8_loops [threads]
//
// 12 int8 matrices of 2048 x 2048 (48 MB, more than the L3 of the machines here), all the threads
// taking runs of rows, the variants taking turns; each line: the median of 15 passes.
//   read      the bytes summed (what memory gives)
//   widen     the old step: each weight sign-extended, converted to fp32, FMA (4 rows a pass)
//   pairs     int16 activations x row-pair-packed int8, vpmaddwd (csrc/int8_product.cpp), 1 row of x
//   blend     the same pairs formed in registers from the unpacked [K, J] matrix (no copy)
//   pairs4    pairs at 4 rows of x, every row in one pass, activations reloaded per 8 columns
//   pairs4x2  pairs at 4 rows of x, two rows a pass, activations broadcast once per 4 pairs (the step's)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <omp.h>

namespace {

constexpr int64_t K = 2048, J = 2048, kMatrices = 12, P = K / 2;

__attribute__((target("avx2"))) int64_t read(const int8_t* w, int64_t n) {
  __m256i s = _mm256_setzero_si256();
  for (int64_t i = 0; i < n; i += 32)
    s = _mm256_add_epi64(s, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(w + i)), _mm256_setzero_si256()));
  int64_t o[4];
  _mm256_storeu_si256((__m256i*)o, s);
  return o[0] + o[1] + o[2] + o[3];
}

__attribute__((target("avx2,fma"))) void widen(const float* x, const int8_t* w, int64_t rows, float* acc) {
  for (int64_t k = 0; k + 4 <= rows; k += 4)
    for (int64_t j = 0; j + 8 <= J; j += 8) {
      __m256 v = _mm256_loadu_ps(acc + j);
      for (int t = 0; t < 4; ++t) {
        const __m256 wt = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(w + (k + t) * J + j))));
        v = _mm256_fmadd_ps(_mm256_set1_ps(x[k + t]), wt, v);
      }
      _mm256_storeu_ps(acc + j, v);
    }
}

// rows n of x in one pass, activations reloaded for every 8 columns
__attribute__((target("avx2"))) void pairs(const int32_t* x2, const int8_t* q2, int64_t pairs, int32_t* acc, int n) {
  for (int64_t p = 0; p + 4 <= pairs; p += 4)
    for (int64_t j = 0; j + 8 <= J; j += 8) {
      __m256i w[4];
      for (int t = 0; t < 4; ++t) w[t] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q2 + (p + t) * 2 * J + 2 * j)));
      for (int r = 0; r < n; ++r) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(acc + r * J + j));
        for (int t = 0; t < 4; ++t) v = _mm256_add_epi32(v, _mm256_madd_epi16(w[t], _mm256_set1_epi32(x2[r * P + p + t])));
        _mm256_storeu_si256((__m256i*)(acc + r * J + j), v);
      }
    }
}

// two rows of x a pass, activations broadcast once per four pairs
__attribute__((target("avx2"))) void pairs_x2(const int32_t* x2, const int8_t* q2, int64_t pairs, int32_t* acc) {
  for (int64_t p = 0; p + 4 <= pairs; p += 4)
    for (int r = 0; r < 4; r += 2) {
      __m256i a[4], b[4];
      for (int t = 0; t < 4; ++t) a[t] = _mm256_set1_epi32(x2[r * P + p + t]), b[t] = _mm256_set1_epi32(x2[(r + 1) * P + p + t]);
      for (int64_t j = 0; j + 8 <= J; j += 8) {
        __m256i va = _mm256_loadu_si256((const __m256i*)(acc + r * J + j));
        __m256i vb = _mm256_loadu_si256((const __m256i*)(acc + (r + 1) * J + j));
        for (int t = 0; t < 4; ++t) {
          const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(q2 + (p + t) * 2 * J + 2 * j)));
          va = _mm256_add_epi32(va, _mm256_madd_epi16(w, a[t]));
          vb = _mm256_add_epi32(vb, _mm256_madd_epi16(w, b[t]));
        }
        _mm256_storeu_si256((__m256i*)(acc + r * J + j), va);
        _mm256_storeu_si256((__m256i*)(acc + (r + 1) * J + j), vb);
      }
    }
}

// the pairs made in registers from rows k, k+1 of the [K, J] matrix: a shift and a blend each
__attribute__((target("avx2"))) void blend(const int32_t* x2, const int8_t* w, int64_t rows, int32_t* acc) {
  for (int64_t k = 0; k + 8 <= rows; k += 8)
    for (int64_t j = 0; j + 16 <= J; j += 16) {
      __m256i ve = _mm256_loadu_si256((const __m256i*)(acc + j)), vo = _mm256_loadu_si256((const __m256i*)(acc + j + 8));
      for (int t = 0; t < 4; ++t) {
        const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + (k + 2 * t) * J + j)));
        const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + (k + 2 * t + 1) * J + j)));
        const __m256i x = _mm256_set1_epi32(x2[k / 2 + t]);
        ve = _mm256_add_epi32(ve, _mm256_madd_epi16(_mm256_blend_epi16(a, _mm256_slli_epi32(b, 16), 0xAA), x));
        vo = _mm256_add_epi32(vo, _mm256_madd_epi16(_mm256_blend_epi16(_mm256_srli_epi32(a, 16), b, 0xAA), x));
      }
      _mm256_storeu_si256((__m256i*)(acc + j), ve);
      _mm256_storeu_si256((__m256i*)(acc + j + 8), vo);
    }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) omp_set_num_threads(atoi(argv[1]));
  std::vector<int8_t> w(kMatrices * K * J);
  for (auto& v : w) v = static_cast<int8_t>(rand() % 255 - 127);
  std::vector<float> x(K, 0.5f);
  std::vector<int32_t> x2(4 * P, 0x00640064);  // 4 rows of 100, 100 pairs
  const char* names[] = {"read", "widen", "pairs", "blend", "pairs4", "pairs4x2"};
  constexpr int kVariants = 6;
  std::vector<std::vector<double>> times(kVariants);
  volatile int64_t sink = 0;
  for (int pass = 0; pass < 15; ++pass)
    for (int v = 0; v < kVariants; ++v) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t m = 0; m < kMatrices; ++m) {
        const int8_t* mat = w.data() + m * K * J;
#pragma omp parallel
        {
          const int t = omp_get_thread_num(), T = omp_get_num_threads();
          const int64_t p0 = P * t / T, p1 = P * (t + 1) / T;  // a thread's run of row pairs
          std::vector<float> acc(J);
          std::vector<int32_t> iacc(4 * J);
          if (v == 0) sink += read(mat + 2 * p0 * J, 2 * (p1 - p0) * J);
          if (v == 1) widen(x.data() + 2 * p0, mat + 2 * p0 * J, 2 * (p1 - p0), acc.data());
          if (v == 2) pairs(x2.data() + p0, mat + 2 * p0 * J, p1 - p0, iacc.data(), 1);
          if (v == 3) blend(x2.data() + p0, mat + 2 * p0 * J, 2 * (p1 - p0), iacc.data());
          if (v == 4) pairs(x2.data() + p0, mat + 2 * p0 * J, p1 - p0, iacc.data(), 4);
          if (v == 5) pairs_x2(x2.data() + p0, mat + 2 * p0 * J, p1 - p0, iacc.data());
        }
      }
      times[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  for (int v = 0; v < kVariants; ++v) {
    std::sort(times[v].begin(), times[v].end());
    const double s = times[v][times[v].size() / 2];
    printf("%-9s %6.2f ms  %5.1f GB/s of weights\n", names[v], s * 1e3, kMatrices * K * J / s / 1e9);
  }
}
