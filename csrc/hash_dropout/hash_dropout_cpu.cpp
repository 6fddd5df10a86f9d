// CPU body of hash_dropout: out[i] = x[i] * (keep(i) ? 1 / (1 - p) : 0), keep(i) the counter hash of
// flat index i and the seed (common/counter_hash.h), on a contiguous copy of x. The op is linear in
// x with the same mask, so its backward is this function applied to the gradient.
// torch's CPU dropout draws one mt19937 number per element (about 15 ns each here); the hash
// vectorises and costs a few instructions per element.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/checks.h"
#include "common/counter_hash.h"

namespace scob_fast::hash_dropout {

inline constexpr const char* kOpName = "hash_dropout";
constexpr int64_t kBlock = 4096;

// The extension is built for baseline x86-64, whose SSE2 has no 32-bit vector multiply: the hash
// loop is compiled per x86 level (AVX-512, AVX2, baseline) and picked at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#endif
void keep_block(uint8_t* keep, int64_t count, uint32_t high, uint32_t low0, uint32_t threshold) {
  for (int64_t j = 0; j < count; ++j) {
    keep[j] = dropout_mix32(high ^ (low0 + static_cast<uint32_t>(j))) >= threshold;
  }
}

at::Tensor hash_dropout_cpu(const at::Tensor& x, double p, int64_t seed) {
  SCOB_FAST_CHECK_ARG(x.device().is_cpu(), "x", "expected a CPU tensor, got ", x.device());
  SCOB_FAST_CHECK_ARG(at::isFloatingType(x.scalar_type()), "x", "expected a floating tensor, got ",
                      x.scalar_type());
  SCOB_FAST_CHECK_ARG(p >= 0.0 && p < 1.0, "p", "must be in [0, 1), got ", p);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  const int64_t n = input.numel();
  const uint32_t threshold = dropout_threshold(p);
  const uint32_t seed32 = static_cast<uint32_t>(seed & 0xffffffffLL);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "hash_dropout_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(1.0 / (1.0 - p));
    // Blocks never straddle a multiple of 2^32, so within one the counter's high word, and with it
    // the first mix, is a constant and the hash is 32-bit integer arithmetic.
    at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t first, int64_t last) {
      uint8_t keep[kBlock];
      for (int64_t block = first; block < last; ++block) {
        const int64_t begin = block * kBlock, count = std::min(n - begin, kBlock);
        const uint32_t high = dropout_mix32(static_cast<uint32_t>(static_cast<uint64_t>(begin) >> 32) + seed32);
        keep_block(keep, count, high, static_cast<uint32_t>(begin), threshold);
        const scalar_t* s = src + begin;
        scalar_t* d = dst + begin;
        for (int64_t j = 0; j < count; ++j) {
          d[j] = static_cast<scalar_t>(static_cast<acc_t>(s[j]) * (keep[j] ? scale : acc_t(0)));
        }
      }
    });
  });
  return out;
}

}  // namespace scob_fast::hash_dropout

TORCH_LIBRARY_FRAGMENT(scob_fast, m) {
  // x times the seed's keep mask over x's flat (row-major) indices, survivors scaled by 1 / (1 - p).
  m.def("hash_dropout(Tensor x, float p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(scob_fast, CPU, m) {
  m.impl("hash_dropout", &scob_fast::hash_dropout::hash_dropout_cpu);
}
