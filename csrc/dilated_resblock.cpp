// Schema of the extension's ops and their CPU implementation.
//
// The CPU kernel walks (sample, tile of T positions) pairs in parallel. Per tile it builds the
// three relu'd taps of x, accumulates the dilated convolution into a [S, T] fp32 buffer with
// three register-tiled products, applies relu, runs the 1x1 convolution as one more and writes
// x + res_scale * (. + b2). The intermediate never leaves the thread's buffers, so the block
// reads x (three taps) and writes out once, where the unfused reference makes five passes.
#include <algorithm>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dilated_resblock.h"

namespace jukebox_fast {
namespace {

// Register tile of the hand-written products: kRows output rows x kCols positions in fp32
// accumulators (16 AVX-512 or AVX2 registers' worth), swept over the reduction dimension.
constexpr int64_t kRows = 8;
constexpr int64_t kCols = 32;

// Positions per tile: the three fp32 buffers (tap [C, T], h [S, T], o [C, T]) stay near 256 KiB,
// the L2 share of one core, while keeping the products at least kCols wide.
int64_t tile_length(int64_t C, int64_t S) {
  const int64_t t = (64 * 1024) / (2 * C + S);
  return std::clamp<int64_t>(t / kCols * kCols, kCols, 1024);
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// acc[R, T] (+)= W[R, K] · B[K, T] for all R rows (a multiple of kRows) and T columns (a multiple
// of kCols); row r of W starts at w + r * K, row k of B at b + k * T. Compiled once per vector ISA
// and picked at load time, so a portable build still runs at the machine's vector width.
__attribute__((target_clones("avx512f", "avx2", "default")))
void product(const float* w, const float* b, float* acc, int64_t R, int64_t K, int64_t T, bool add) {
  for (int64_t r0 = 0; r0 < R; r0 += kRows) {
    for (int64_t j0 = 0; j0 < T; j0 += kCols) {
      float a[kRows][kCols];
      for (int64_t r = 0; r < kRows; ++r)
        for (int64_t j = 0; j < kCols; ++j) a[r][j] = add ? acc[(r0 + r) * T + j0 + j] : 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const float* brow = b + k * T + j0;
        for (int64_t r = 0; r < kRows; ++r) {
          const float wr = w[(r0 + r) * K + k];
          for (int64_t j = 0; j < kCols; ++j) a[r][j] += wr * brow[j];
        }
      }
      for (int64_t r = 0; r < kRows; ++r)
        for (int64_t j = 0; j < kCols; ++j) acc[(r0 + r) * T + j0 + j] = a[r][j];
    }
  }
}

template <typename scalar_t>
void resblock_tile(const scalar_t* x, scalar_t* out, const float* w1, const float* b1, const float* w2,
                   const float* b2, int64_t C, int64_t S, int64_t L, int64_t T, int64_t t0, int64_t len,
                   int64_t dilation, float res_scale, float* tap, float* h, float* o) {
  // Buffers hold S and C padded to kRows (zero weight rows) and the full T columns: columns past
  // len compute on zeros and are never written out.
  const int64_t Sp = round_up(S, kRows), Cp = round_up(C, kRows);
  for (int64_t k = 0; k < 3; ++k) {
    const int64_t shift = (k - 1) * dilation;
    // tap[c, j] = relu(x[c, t0 + j + shift]), zero outside [0, L) (the convolution's padding)
    const int64_t lo = std::clamp<int64_t>(-shift - t0, 0, len);
    const int64_t hi = std::clamp<int64_t>(L - shift - t0, lo, len);
    for (int64_t c = 0; c < C; ++c) {
      float* row = tap + c * T;
      const scalar_t* src = x + c * L + t0 + shift;
      std::fill(row, row + lo, 0.f);
      for (int64_t j = lo; j < hi; ++j) row[j] = std::max(static_cast<float>(src[j]), 0.f);
      std::fill(row + hi, row + T, 0.f);
    }
    product(w1 + k * Sp * C, tap, h, Sp, C, T, k > 0);  // h[Sp, T] (+)= W1_k[Sp, C] · tap[C, T]
  }
  for (int64_t s = 0; s < Sp; ++s) {
    float* row = h + s * T;
    const float bias = s < S ? b1[s] : 0.f;
    for (int64_t j = 0; j < T; ++j) row[j] = std::max(row[j] + bias, 0.f);
  }
  product(w2, h, o, Cp, Sp, T, false);  // o[Cp, T] = W2[Cp, Sp] · h[Sp, T]
  for (int64_t c = 0; c < C; ++c) {
    const scalar_t* xr = x + c * L + t0;
    scalar_t* orow = out + c * L + t0;
    const float* r = o + c * T;
    for (int64_t j = 0; j < len; ++j)
      orow[j] = static_cast<scalar_t>(static_cast<float>(xr[j]) + res_scale * (r[j] + b2[c]));
  }
}

void dilated_resblock_cpu(const at::Tensor& x_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
                          const at::Tensor& w2_in, const at::Tensor& b2_in, int64_t dilation, double res_scale,
                          at::Tensor& out) {
  check_resblock_inputs(x_in, w1_in, b1_in, w2_in, b2_in, dilation, out);
  TORCH_CHECK(x_in.device().is_cpu(), "dilated_resblock (cpu): x must be on the CPU, got ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2), S = w1_in.size(0);
  const int64_t Sp = round_up(S, kRows), Cp = round_up(C, kRows);
  // fp32 weights with zero rows up to the padded heights: w1 [3, Sp, C] (one matrix per tap),
  // w2 [Cp, Sp]
  const at::Tensor w1 = at::constant_pad_nd(w1_in.to(at::kFloat).permute({2, 0, 1}), {0, 0, 0, Sp - S}).contiguous();
  const at::Tensor w2 = at::constant_pad_nd(w2_in.to(at::kFloat).reshape({C, S}), {0, Sp - S, 0, Cp - C}).contiguous();
  const at::Tensor b1 = b1_in.to(at::kFloat).contiguous();
  const at::Tensor b2 = b2_in.to(at::kFloat).contiguous();
  if (out.numel() == 0) return;
  const int64_t T = tile_length(C, S);
  const int64_t tiles = (L + T - 1) / T;
  JUKEBOX_FAST_DISPATCH_FLOATS(x.scalar_type(), "dilated_resblock_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> tap(C * T), h(Sp * T), o(Cp * T);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t n = job / tiles, t0 = (job % tiles) * T;
        resblock_tile<scalar_t>(xp + n * C * L, op + n * C * L, w1.const_data_ptr<float>(),
                                b1.const_data_ptr<float>(), w2.const_data_ptr<float>(), b2.const_data_ptr<float>(),
                                C, S, L, T, t0, std::min(T, L - t0), dilation, static_cast<float>(res_scale),
                                tap.data(), h.data(), o.data());
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY(jukebox_fast_ext, m) {
  m.def(
      "dilated_resblock(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, int dilation, float res_scale, "
      "Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(jukebox_fast_ext, CPU, m) {
  m.impl("dilated_resblock", &dilated_resblock_cpu);
}

}  // namespace jukebox_fast
