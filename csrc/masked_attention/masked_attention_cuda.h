// Launchers of the CUDA kernels (masked_attention_kernel.cu), called from masked_attention_cuda.cpp.
#pragma once

#include <ATen/ATen.h>

namespace scob_fast::masked_attention {

// index: int32 [B, L], each sample's kept key positions first; counts: int32 [B]. lse: float [B, H, L].
void launch_masked_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& index, const at::Tensor& counts, at::Tensor& out, at::Tensor& lse,
                                 double scale, double dropout_p, int64_t seed);

// grad_out contiguous; delta = rowsum(grad_out * out), float [B, H, L]; dk, dv zero-initialised.
void launch_masked_attention_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& index, const at::Tensor& counts,
                                 const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dq, at::Tensor& dk,
                                 at::Tensor& dv, double scale, double dropout_p, int64_t seed);

}  // namespace scob_fast::masked_attention
