// CUDA glue of masked attention: checks, keep-mask compaction, launches, and the CUDA registration of
// the ops whose schemas live in masked_attention_registration.cpp. Built only in CUDA builds.
#include <torch/library.h>

#include "masked_attention/masked_attention.h"
#include "masked_attention/masked_attention_cuda.h"

namespace scob_fast::masked_attention {
namespace {

void check_cuda_limits(const at::Tensor& q) {
  SCOB_FAST_CHECK_ARG(q.size(3) <= 128, "q", "head dim D=", q.size(3), " > 128 is not supported by the CUDA kernel");
  SCOB_FAST_CHECK_ARG(q.scalar_type() != at::kDouble, "q", "float64 is not supported by the CUDA kernel");
}

std::tuple<at::Tensor, at::Tensor> compact(const at::Tensor& key_keep) {
  // Stable sort of "dropped" flags puts each sample's kept positions first, in ascending order.
  at::Tensor index = at::argsort(key_keep.logical_not().to(at::kChar), /*stable=*/true, /*dim=*/1)
                         .to(at::kInt).contiguous();
  at::Tensor counts = key_keep.sum(1, /*keepdim=*/false, at::kInt).contiguous();
  return {index, counts};
}

std::tuple<at::Tensor, at::Tensor> masked_attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& key_keep,
                                                              double scale, double dropout_p, int64_t seed) {
  const Sizes s = check_forward_inputs(q, k, v, key_keep, dropout_p, c10::kCUDA);
  check_cuda_limits(q);
  at::Tensor out = at::empty({s.B, s.H, s.L, s.D}, q.options());
  at::Tensor lse = at::empty({s.B, s.H, s.L}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) {
    lse.zero_();
    return {out, lse};
  }
  auto [index, counts] = compact(key_keep);
  launch_masked_attention_fwd(q, k, v, index, counts, out, lse, scale, dropout_p, seed);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_keep, const at::Tensor& out, const at::Tensor& lse, double scale, double dropout_p,
    int64_t seed) {
  const Sizes s = check_backward_inputs(grad_out, q, k, v, key_keep, out, lse, dropout_p, c10::kCUDA);
  check_cuda_limits(q);
  at::Tensor dq = at::empty({s.B, s.H, s.L, s.D}, q.options());
  at::Tensor dk = at::zeros({s.B, s.H, s.L, s.D}, q.options());
  at::Tensor dv = at::zeros({s.B, s.H, s.L, s.D}, q.options());
  if (dq.numel() == 0) return {dq, dk, dv};
  const at::Tensor g = grad_out.contiguous();
  const at::Tensor delta = (g.to(at::kFloat) * out.to(at::kFloat)).sum(-1).contiguous();
  auto [index, counts] = compact(key_keep);
  launch_masked_attention_bwd(g, q, k, v, index, counts, lse.contiguous(), delta, dq, dk, dv, scale, dropout_p,
                              seed);
  return {dq, dk, dv};
}

}  // namespace
}  // namespace scob_fast::masked_attention

TORCH_LIBRARY_IMPL(scob_fast, CUDA, m) {
  m.impl("masked_attention_fwd", &scob_fast::masked_attention::masked_attention_fwd_cuda);
  m.impl("masked_attention_bwd", &scob_fast::masked_attention::masked_attention_bwd_cuda);
}
