// The fused residual block of the VQ-VAE decoder and the upsampler conditioner:
//
//   out = x + res_scale * (W2 · relu(W1 *_d relu(x) + b1) + b2)
//
// x [N, C, L] channels-first, W1 [S, C, 3] a k=3 convolution with dilation d and padding d,
// W2 [C, S, 1] a 1x1 convolution. The result goes to a caller-allocated contiguous `out` (so
// tests can poison it). Shared by the CPU (.cpp) and CUDA (.cu) implementations:
// the checks both run before touching memory, so bad input is a clear error, never a crash.
#pragma once

#include <ATen/ATen.h>

namespace jukebox_fast {

// The three dtypes the kernels take (AT_DISPATCH_FLOATING_TYPES would also compile double).
#define JUKEBOX_FAST_DISPATCH_FLOATS(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

inline void check_resblock_inputs(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                  const at::Tensor& w2, const at::Tensor& b2, int64_t dilation,
                                  const at::Tensor& out) {
  TORCH_CHECK(x.dim() == 3, "dilated_resblock: x must be [N, C, L], got ", x.sizes());
  const int64_t C = x.size(1);
  TORCH_CHECK(w1.dim() == 3 && w1.size(1) == C && w1.size(2) == 3,
              "dilated_resblock: w1 must be [S, ", C, ", 3], got ", w1.sizes());
  const int64_t S = w1.size(0);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == S, "dilated_resblock: b1 must be [", S, "], got ", b1.sizes());
  TORCH_CHECK(w2.dim() == 3 && w2.size(0) == C && w2.size(1) == S && w2.size(2) == 1,
              "dilated_resblock: w2 must be [", C, ", ", S, ", 1], got ", w2.sizes());
  TORCH_CHECK(b2.dim() == 1 && b2.size(0) == C, "dilated_resblock: b2 must be [", C, "], got ", b2.sizes());
  TORCH_CHECK(dilation >= 1, "dilated_resblock: dilation must be >= 1, got ", dilation);
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "dilated_resblock: x must be float32, float16 or bfloat16, got ", dtype);
  for (const at::Tensor* t : {&w1, &b1, &w2, &b2}) {
    TORCH_CHECK(t->scalar_type() == dtype, "dilated_resblock: weights must have x's dtype ", dtype,
                ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), "dilated_resblock: weights must be on x's device ", x.device(),
                ", got ", t->device());
  }
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == dtype && out.device() == x.device() &&
                  out.is_contiguous(),
              "dilated_resblock: out must be a contiguous tensor like x (", x.sizes(), ", ", dtype, ", ", x.device(),
              "), got ", out.sizes(), ", ", out.scalar_type(), ", ", out.device());
  TORCH_CHECK(!out.is_same(x), "dilated_resblock: out must not be x (the taps read x around each position)");
}

}  // namespace jukebox_fast
