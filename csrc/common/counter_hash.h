// Counter-based random bits shared by every op that drops elements (attention weights in
// masked_attention, activations in hash_dropout): whether element `counter` survives is a hash of
// its flat index and the seed, so forward and backward (and every backend, and the PyTorch
// references in scob_fast/ops/counter_hash.py) agree without storing a mask.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SCOB_FAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SCOB_FAST_HOST_DEVICE inline
#endif

namespace scob_fast {

SCOB_FAST_HOST_DEVICE uint32_t dropout_mix32(uint32_t x) {
  // "lowbias32" integer finaliser (Chris Wellons' hash prospector): good avalanche, two multiplies.
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

SCOB_FAST_HOST_DEVICE uint32_t dropout_bits(uint64_t counter, uint32_t seed) {
  return dropout_mix32(dropout_mix32(static_cast<uint32_t>(counter >> 32) + seed) ^
                       static_cast<uint32_t>(counter));
}

// Elements whose bits are >= threshold survive; P(survive) = 1 - p up to 2^-32.
inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 4294967295U : static_cast<uint32_t>(t);
}

}  // namespace scob_fast
