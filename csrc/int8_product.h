// The C++ decode step's product with a weight-only int8 matrix (see int8_product.cpp).
#pragma once

#include <cstdint>

namespace jukebox_fast {

// y[n, :J] = x[n, :K] (q s) + b for n < N: x rows K apart, y rows J apart; q int8 [K, J] packed in
// row pairs ([ceil(K/2), J, 2], a zero row after an odd K), s its fp32 column scales [J], b [J].
void int8_linear(const float* x, int64_t K, const int8_t* pairs, int64_t J, const float* scale, const float* b,
                 float* y, int64_t N);

}  // namespace jukebox_fast
