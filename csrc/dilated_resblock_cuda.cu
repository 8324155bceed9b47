// CUDA implementation of jukebox_fast_ext::dilated_resblock (schema in dilated_resblock.cpp).
//
// One launch per block. A thread block owns one sample and a tile of TL positions:
//   phase 1: h[S, TL] = relu(W1 *_d relu(x) + b1), kept in shared memory in fp32;
//   phase 2: out[C, TL] = x + res_scale * (W2 · h + b2), written once.
// x is read once per tile (three shifted taps, the outer two from L2 once d is large) and the
// intermediate never reaches global memory: the unfused reference makes five passes over it.
// (Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls in cuSPARSE/cuBLAS headers a bare
// toolkit may lack, and nothing here needs them.)
// Both phases are register-tiled products: 256 threads, each accumulating 4 rows x TL/16
// positions in fp32 over reduction chunks of kChunk staged in shared memory.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dilated_resblock.h"

namespace jukebox_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kRows = 64;   // output rows (channels) per pass: 16 thread rows x 4
constexpr int kChunk = 16;  // reduction channels staged per step
constexpr int kMaxHiddenBytes = 128 * 1024;

// Largest tile whose fp32 intermediate fits the shared-memory budget; 0 when none does.
int tile_for(int64_t padded_state) {
  for (int tl : {64, 32, 16})
    if (padded_state * tl * 4 <= kMaxHiddenBytes) return tl;
  return 0;
}

size_t shared_bytes(int64_t padded_state, int tl) {
  return sizeof(float) * (padded_state * tl + 3 * kChunk * tl + 3 * kChunk * kRows);
}

// acc[i][j] += a[ty + 16 i] · b[tx + 16 j]: one rank-1 update of a thread's 4 x RT register tile
// (rows strided by 16 so a warp's two thread rows read two shared-memory words, broadcast).
template <int RT>
__device__ __forceinline__ void rank1_update(float (&acc)[4][RT], const float* a, const float* b, int ty, int tx) {
  float av[4], bv[RT];
#pragma unroll
  for (int i = 0; i < 4; ++i) av[i] = a[ty + 16 * i];
#pragma unroll
  for (int j = 0; j < RT; ++j) bv[j] = b[tx + 16 * j];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < RT; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
}

// Two blocks per SM in the bounds lets ptxas use up to 128 registers; left to itself it capped the
// 16-bit TL=64 variants at 64 and spilled the accumulators.
template <typename scalar_t, int TL>
__global__ void __launch_bounds__(kThreads, 2)
resblock_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w1, const scalar_t* __restrict__ b1,
                const scalar_t* __restrict__ w2, const scalar_t* __restrict__ b2, scalar_t* __restrict__ out,
                int C, int S, int padded_state, int64_t L, int64_t dilation, float res_scale) {
  constexpr int RT = TL / 16;  // positions per thread
  extern __shared__ float smem[];
  float* h = smem;                              // [padded_state, TL]
  float* xs = h + padded_state * TL;            // [3, kChunk, TL]: relu'd taps of x
  float* ws = xs + 3 * kChunk * TL;             // [kChunk * 3, kRows]: a weight chunk, transposed

  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * TL;
  const scalar_t* xn = x + static_cast<int64_t>(blockIdx.y) * C * L;
  scalar_t* on = out + static_cast<int64_t>(blockIdx.y) * C * L;

  // Phase 1: rows of h beyond S come out as relu(0) = 0, so phase 2 needs no bounds on s.
  for (int s0 = 0; s0 < padded_state; s0 += kRows) {
    float acc[4][RT] = {};
    for (int c0 = 0; c0 < C; c0 += kChunk) {
      __syncthreads();
      for (int e = tid; e < 3 * kChunk * TL; e += kThreads) {
        const int k = e / (kChunk * TL), cc = (e / TL) % kChunk, t = e % TL;
        const int64_t pos = t0 + t + (k - 1) * dilation;
        float v = 0.f;
        if (c0 + cc < C && pos >= 0 && pos < L) v = fmaxf(static_cast<float>(xn[(c0 + cc) * L + pos]), 0.f);
        xs[e] = v;
      }
      for (int e = tid; e < kRows * kChunk * 3; e += kThreads) {
        const int r = e / (kChunk * 3), ck = e % (kChunk * 3);  // ck = cc * 3 + k, contiguous in w1
        const int s = s0 + r, c = c0 + ck / 3;
        ws[ck * kRows + r] = (s < S && c < C) ? static_cast<float>(w1[(static_cast<int64_t>(s) * C + c) * 3 + ck % 3]) : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int ck = 0; ck < kChunk * 3; ++ck)
        rank1_update<RT>(acc, ws + ck * kRows, xs + ((ck % 3) * kChunk + ck / 3) * TL, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int s = s0 + ty + 16 * i;
      const float bias = s < S ? static_cast<float>(b1[s]) : 0.f;
#pragma unroll
      for (int j = 0; j < RT; ++j) h[s * TL + tx + 16 * j] = fmaxf(acc[i][j] + bias, 0.f);
    }
  }

  // Phase 2: out = x + res_scale * (W2 · h + b2)
  for (int c0 = 0; c0 < C; c0 += kRows) {
    float acc[4][RT] = {};
    for (int s1 = 0; s1 < padded_state; s1 += kChunk) {
      __syncthreads();  // also orders phase 1's writes of h before these reads
      for (int e = tid; e < kRows * kChunk; e += kThreads) {
        const int r = e / kChunk, ss = e % kChunk;
        const int c = c0 + r, s = s1 + ss;
        ws[ss * kRows + r] = (c < C && s < S) ? static_cast<float>(w2[static_cast<int64_t>(c) * S + s]) : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int ss = 0; ss < kChunk; ++ss) rank1_update<RT>(acc, ws + ss * kRows, h + (s1 + ss) * TL, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int c = c0 + ty + 16 * i;
      const float bias = c < C ? static_cast<float>(b2[c]) : 0.f;
#pragma unroll
      for (int j = 0; j < RT; ++j) {
        const int64_t pos = t0 + tx + 16 * j;
        if (c < C && pos < L) {
          const int64_t at = static_cast<int64_t>(c) * L + pos;
          on[at] = static_cast<scalar_t>(static_cast<float>(xn[at]) + res_scale * (acc[i][j] + bias));
        }
      }
    }
  }
}

template <typename scalar_t, int TL>
void launch(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
            const at::Tensor& b2, at::Tensor& out, int padded_state, int64_t dilation, float res_scale) {
  const int64_t N = x.size(0), C = x.size(1), L = x.size(2), S = w1.size(0);
  const size_t smem = shared_bytes(padded_state, TL);
  auto kernel = resblock_kernel<scalar_t, TL>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((L + TL - 1) / TL), static_cast<unsigned>(N));
  kernel<<<grid, kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), w1.const_data_ptr<scalar_t>(), b1.const_data_ptr<scalar_t>(),
      w2.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
      static_cast<int>(C), static_cast<int>(S), padded_state, L, dilation, res_scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void dilated_resblock_cuda(const at::Tensor& x_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
                           const at::Tensor& w2_in, const at::Tensor& b2_in, int64_t dilation, double res_scale,
                           at::Tensor& out) {
  check_resblock_inputs(x_in, w1_in, b1_in, w2_in, b2_in, dilation, out);
  TORCH_CHECK(x_in.is_cuda(), "dilated_resblock (cuda): x must be on a CUDA device, got ", x_in.device());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w1 = w1_in.contiguous(), b1 = b1_in.contiguous();
  const at::Tensor w2 = w2_in.contiguous(), b2 = b2_in.contiguous();
  const int64_t S = w1.size(0);
  const int padded_state = static_cast<int>((S + kRows - 1) / kRows * kRows);
  const int tl = tile_for(padded_state);
  TORCH_CHECK(tl > 0, "dilated_resblock (cuda): the hidden width ", S, " does not fit in shared memory (at most ",
              kMaxHiddenBytes / (16 * 4), ")");
  TORCH_CHECK(x.size(2) / 16 < (int64_t{1} << 31) && x.size(0) < 65536,
              "dilated_resblock (cuda): at most 65535 samples and 2^35 positions, got ", x.sizes());
  if (out.numel() == 0) return;
  const float scale = static_cast<float>(res_scale);
  JUKEBOX_FAST_DISPATCH_FLOATS(x.scalar_type(), "dilated_resblock_cuda", [&] {
    if (tl == 64) launch<scalar_t, 64>(x, w1, b1, w2, b2, out, padded_state, dilation, scale);
    else if (tl == 32) launch<scalar_t, 32>(x, w1, b1, w2, b2, out, padded_state, dilation, scale);
    else launch<scalar_t, 16>(x, w1, b1, w2, b2, out, padded_state, dilation, scale);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(jukebox_fast_ext, CUDA, m) {
  m.impl("dilated_resblock", &dilated_resblock_cuda);
}

}  // namespace jukebox_fast
