// One position through a stack of pre-LN transformer layers on the CPU, reading and writing each
// layer's static KV cache: the C++ implementation of the `decode_layers` op
// (jukebox_fast/ops/decode_layers.py holds the reference and the argument layout).
//
// Per layer, for the N samples' rows x [N, W] (weights in the original's Conv1D layout [in, out]):
//   h = LN0(x);  q | k | v = h Wa + ba;  k, v -> the cache slot of this position
//   a = softmax(q K[lo:hi]^T scale) V[lo:hi] per head;  a = a Wp + bp
//   m = quick_gelu(LN1(x + a) Wf + bf) Wm + bm;  x = x + a + m  (or x + rs (a + m))
//
// A decode step is a chain of matrix-vector products whose weights are read once per step, so it
// runs at the speed weights stream from cache/memory. BLAS's small-m GEMM re-packs every weight
// for each call (2.5x slower than streaming at m = 4); `rows_times` streams each weight tile once
// for up to kRows samples. The whole stack is one call, so Python pays for one op per step.
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace jukebox_fast {
namespace {

constexpr int64_t kRows = 4;   // samples per register tile
constexpr int64_t kCols = 64;  // output columns per register tile: kRows x kCols fp32 accumulators
// Below this many weights (or keys x head width) a product stays on one thread: at width 256 the
// fork-join of smaller splits measured no faster than one core.
constexpr int64_t kWeightsPerTask = 1 << 16;
constexpr int64_t kWeightsPerLayer = 12;      // see WEIGHT_NAMES in ops/decode_layers.py

// y[r, j0:j0+cols] = b[j0:j0+cols] + x[r, :K] w[:K, j0:j0+cols] for r < n <= kRows; x rows are K
// apart, w rows J apart, y rows J apart. Compiled once per vector ISA and picked at load time.
__attribute__((target_clones("avx512f", "avx2", "default")))
void rows_times(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t K, int64_t J,
                int64_t j0, int64_t cols) {
  float acc[kRows][kCols] = {};
  if (cols == kCols) {  // full tile: fixed trip counts, so the column loop vectorises
    for (int64_t k = 0; k < K; ++k) {
      const float* wk = w + k * J + j0;
      for (int64_t r = 0; r < kRows; ++r) {
        const float xr = r < n ? x[r * K + k] : 0.f;
        for (int64_t j = 0; j < kCols; ++j) acc[r][j] += xr * wk[j];
      }
    }
  } else {  // the last, narrower tile (reading kCols columns there would run past w's end)
    for (int64_t k = 0; k < K; ++k) {
      const float* wk = w + k * J + j0;
      for (int64_t r = 0; r < n; ++r) {
        const float xr = x[r * K + k];
        for (int64_t j = 0; j < cols; ++j) acc[r][j] += xr * wk[j];
      }
    }
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < cols; ++j) y[r * J + j0 + j] = acc[r][j] + b[j0 + j];
}

// y[N, J] = x[N, K] w[K, J] + b, column tiles shared between threads when there is enough to share.
void linear(const float* x, const at::Tensor& w, const at::Tensor& b, float* y, int64_t N) {
  const int64_t K = w.size(0), J = w.size(1);
  const float* wp = w.const_data_ptr<float>();
  const float* bp = b.const_data_ptr<float>();
  const int64_t tiles = (J + kCols - 1) / kCols;
  const int64_t grain = std::max<int64_t>(1, kWeightsPerTask / (K * kCols));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j0 = t * kCols, cols = std::min(kCols, J - j0);
      for (int64_t r0 = 0; r0 < N; r0 += kRows)  // later row groups find the tile in cache
        rows_times(x + r0 * K, wp, bp, y + r0 * J, std::min(kRows, N - r0), K, J, j0, cols);
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

void check_float_cpu(const at::Tensor& t, const char* what, int64_t layer) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "decode_layers (cpp): layer ", layer, "'s ", what, " must be a contiguous float32 CPU tensor, got ",
              t.scalar_type(), " on ", t.device(), t.is_contiguous() ? "" : " (not contiguous)");
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* what, int64_t layer) {
  TORCH_CHECK(t.sizes() == shape, "decode_layers (cpp): layer ", layer, "'s ", what, " must be ", shape,
              ", got ", t.sizes());
}

// Checks a whole layer before any memory is touched, so bad input is an error, never a crash.
// Returns the attention width S (= heads * d) and whether the layer is cross-attention.
std::pair<int64_t, bool> check_layer(const at::Tensor* wt, const at::Tensor& kc, const at::Tensor& vc, int64_t l,
                                     int64_t N, int64_t W, int64_t H) {
  static const char* names[kWeightsPerLayer] = {"ln_0.weight", "ln_0.bias", "attn.c_attn.w", "attn.c_attn.b",
                                                "attn.c_proj.w", "attn.c_proj.b", "ln_1.weight", "ln_1.bias",
                                                "mlp.c_fc.w", "mlp.c_fc.b", "mlp.c_proj.w", "mlp.c_proj.b"};
  for (int64_t i = 0; i < kWeightsPerLayer; ++i) check_float_cpu(wt[i], names[i], l);
  check_float_cpu(kc, "key cache", l);
  check_float_cpu(vc, "value cache", l);
  TORCH_CHECK(wt[4].dim() == 2 && wt[8].dim() == 2, "decode_layers (cpp): layer ", l,
              "'s projections must be [in, out] matrices, got ", wt[4].sizes(), " and ", wt[8].sizes());
  const int64_t S = wt[4].size(0), F = wt[8].size(1);
  TORCH_CHECK(H >= 1 && S % H == 0, "decode_layers (cpp): layer ", l, " has ", H, " heads for width ", S);
  for (int64_t i : {0, 1, 5, 6, 7, 11}) check_shape(wt[i], {W}, names[i], l);
  check_shape(wt[4], {S, W}, names[4], l);
  check_shape(wt[8], {W, F}, names[8], l);
  check_shape(wt[9], {F}, names[9], l);
  check_shape(wt[10], {F, W}, names[10], l);
  TORCH_CHECK(wt[2].dim() == 2 && wt[2].size(0) == W && (wt[2].size(1) == 3 * S || wt[2].size(1) == S),
              "decode_layers (cpp): layer ", l, "'s attn.c_attn.w must be [", W, ", ", 3 * S, "] (or [", W, ", ",
              S, "] for cross-attention), got ", wt[2].sizes());
  check_shape(wt[3], {wt[2].size(1)}, names[3], l);
  TORCH_CHECK(kc.dim() == 4 && kc.size(0) == N && kc.size(1) == H && kc.size(3) == S / H && vc.sizes() == kc.sizes(),
              "decode_layers (cpp): layer ", l, "'s caches must be [", N, ", ", H, ", slots, ", S / H, "], got ",
              kc.sizes(), " and ", vc.sizes());
  return {S, wt[2].size(1) == S};
}

void decode_layers_cpu(const at::Tensor& x_in, at::TensorList weights, at::TensorList k_cache,
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
    const auto [S, is_cross] = check_layer(&weights[kWeightsPerLayer * l], k_cache[l], v_cache[l], l, N, W, heads[l]);
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
    const int64_t S = widths[l], H = heads[l], d = S / H, J = wt[2].size(1), F = wt[8].size(1);
    float* kc = k_cache[l].mutable_data_ptr<float>();
    float* vc = v_cache[l].mutable_data_ptr<float>();
    const int64_t slots = k_cache[l].size(2);

    layer_norm(xs.data(), wt[0], wt[1], eps, hn.data(), N, W);
    linear(hn.data(), wt[2], wt[3], qkv.data(), N);  // [N, J]: q | k | v, heads contiguous in each
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
    linear(att.data(), wt[4], wt[5], proj.data(), N);  // a [N, W]
    for (int64_t i = 0; i < N * W; ++i) hn[i] = xs[i] + proj[i];
    layer_norm(hn.data(), wt[6], wt[7], eps, hn.data(), N, W);
    linear(hn.data(), wt[8], wt[9], mid.data(), N);  // [N, F]
    for (int64_t i = 0; i < N * F; ++i) mid[i] = mid[i] / (1.f + std::exp(-1.702f * mid[i]));
    linear(mid.data(), wt[10], wt[11], mlp.data(), N);  // m [N, W]
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
      "decode_layers(Tensor x, Tensor[] weights, Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, Tensor schedule, "
      "int[] heads, float[] res_scale, float eps, Tensor position, Tensor(c!) out) -> ()");
}

TORCH_LIBRARY_IMPL(jukebox_fast_ext, CPU, m) {
  m.impl("decode_layers", &decode_layers_cpu);
}

}  // namespace jukebox_fast
