// Class-activation-masked attention: declarations shared by the CPU body, the CUDA launcher and the
// registration. out[b, h, i] = softmax_j(scale * q_i . k_j over the keys j that sample b keeps) @ v;
// a sample that keeps no key gets zero output and zero gradients.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

#include "common/checks.h"

#if defined(__CUDACC__)
#define SCOB_FAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SCOB_FAST_HOST_DEVICE inline
#endif

namespace scob_fast::masked_attention {

// Prefix of every argument error (SCOB_FAST_CHECK_ARG, common/checks.h).
inline constexpr const char* kOpName = "masked_attention";

struct Sizes {
  int64_t B, H, L, D;
};

// Checks q, k, v ([B, H, L, D], same dtype/device, unit stride in D, non-overlapping rows) and
// key_keep (bool [B, L], same device). `device` is the device type the calling kernel runs on.
Sizes check_forward_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& key_keep, double dropout_p, c10::DeviceType device);
// The forward checks plus grad_out/out ([B, H, L, D] like q) and lse (float [B, H, L]).
Sizes check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& key_keep, const at::Tensor& out,
                            const at::Tensor& lse, double dropout_p, c10::DeviceType device);

// Attention-weight dropout without stored masks: whether weight (b, h, i, j) survives is a hash of
// its flat index ((b * H + h) * L + i) * L + j and the seed, so forward and backward (and every
// backend, and the PyTorch reference) agree without saving an L x L mask.
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

// Weights whose bits are >= threshold survive; P(survive) = 1 - p up to 2^-32.
inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 4294967295U : static_cast<uint32_t>(t);
}

std::tuple<at::Tensor, at::Tensor> masked_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_keep,
    double scale, double dropout_p, int64_t seed);

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_keep, const at::Tensor& out, const at::Tensor& lse, double scale,
    double dropout_p, int64_t seed);

}  // namespace scob_fast::masked_attention
