// A decode step's logits on the CPU, out[N, J] = h[N, K] w[J, K]^T (jukebox_fast/ops/step_logits.py
// says why MKL's matrix-vector product is not used): the threads take runs of the weight's rows,
// and each row is read from memory once, for every sample in turn (a row, 8 KB at the released
// widths, stays in L1 between samples).
#include <immintrin.h>

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace jukebox_fast {
namespace {

constexpr int64_t kRowsPerTask = 64;  // below this many weight rows a thread's share is not worth a fork

// out[j] = h . w[j] for four rows j of w (rows K apart), four independent sums so that the FMAs
// do not wait on one another.
__attribute__((target("avx2,fma"))) void dot4_avx2(const float* h, const float* w, int64_t K, float* out) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 x = _mm256_loadu_ps(h + k);
    for (int t = 0; t < 4; ++t) acc[t] = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + t * K + k), acc[t]);
  }
  for (int t = 0; t < 4; ++t) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc[t]);
    float s = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (int64_t i = k; i < K; ++i) s += h[i] * w[t * K + i];
    out[t] = s;
  }
}

float dot(const float* h, const float* w, int64_t K) {
  float s = 0.f;
  for (int64_t k = 0; k < K; ++k) s += h[k] * w[k];
  return s;
}

void step_logits_cpu(const at::Tensor& h, const at::Tensor& w, at::Tensor& out) {
  TORCH_CHECK(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1), "step_logits (cpp): h must be [N, width] and "
              "weight [bins, width], got ", h.sizes(), " and ", w.sizes());
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&h, &w, &out})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu() && t->is_contiguous(),
                "step_logits (cpp): h, weight and out must be contiguous float32 CPU tensors, got ", t->scalar_type(),
                " on ", t->device());
  const int64_t N = h.size(0), K = h.size(1), J = w.size(0);
  TORCH_CHECK(out.sizes() == at::IntArrayRef({N, J}), "step_logits (cpp): out must be [", N, ", ", J, "], got ",
              out.sizes());
  const float* hp = h.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  at::parallel_for(0, (J + 3) / 4, kRowsPerTask / 4, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t j = 4 * g, rows = std::min<int64_t>(4, J - j);
      for (int64_t n = 0; n < N; ++n) {
        float four[4];
        if (avx2 && rows == 4) dot4_avx2(hp + n * K, wp + j * K, K, four);
        else
          for (int64_t t = 0; t < rows; ++t) four[t] = dot(hp + n * K, wp + (j + t) * K, K);
        std::copy(four, four + rows, op + n * J + j);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jukebox_fast_ext, m) {
  m.def("step_logits(Tensor h, Tensor weight, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(jukebox_fast_ext, CPU, m) {
  m.impl("step_logits", &step_logits_cpu);
}

}  // namespace jukebox_fast
