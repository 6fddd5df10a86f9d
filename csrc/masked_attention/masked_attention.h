// Class-activation-masked attention: declarations shared by the CPU body, the CUDA launcher and the
// registration. out[b, h, i] = softmax_j(scale * q_i . k_j over the keys j that sample b keeps) @ v;
// a sample that keeps no key gets zero output and zero gradients.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

#include "common/checks.h"
#include "common/counter_hash.h"

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

// Attention-weight dropout without stored masks (common/counter_hash.h): weight (b, h, i, j) uses
// the counter ((b * H + h) * L + i) * L + j.

std::tuple<at::Tensor, at::Tensor> masked_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_keep,
    double scale, double dropout_p, int64_t seed);

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_keep, const at::Tensor& out, const at::Tensor& lse, double scale,
    double dropout_p, int64_t seed);

}  // namespace scob_fast::masked_attention
