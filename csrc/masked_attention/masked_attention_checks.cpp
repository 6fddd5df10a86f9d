#include "masked_attention/masked_attention.h"

namespace scob_fast::masked_attention {
namespace {

void check_qkv_like(const at::Tensor& t, const char* arg, const at::Tensor& q, c10::DeviceType device) {
  SCOB_FAST_CHECK_ARG(t.dim() == 4, arg, "expected a 4-D tensor [B, H, L, D], got shape ", t.sizes());
  SCOB_FAST_CHECK_ARG(t.sizes() == q.sizes(), arg, "shape ", t.sizes(), " differs from q's ", q.sizes());
  SCOB_FAST_CHECK_ARG(t.device().type() == device, arg, "expected a ", c10::DeviceTypeName(device),
                      " tensor, got device ", t.device());
  SCOB_FAST_CHECK_ARG(t.device() == q.device(), arg, "device ", t.device(), " differs from q's ", q.device());
  SCOB_FAST_CHECK_ARG(t.scalar_type() == q.scalar_type(), arg, "dtype ", t.scalar_type(),
                      " differs from q's ", q.scalar_type());
  const bool float_type = t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 ||
                          t.scalar_type() == at::kDouble || (device == c10::kCUDA && t.scalar_type() == at::kHalf);
  SCOB_FAST_CHECK_ARG(float_type, arg, "dtype ", t.scalar_type(), " is not supported (float32, bfloat16, float64",
                      device == c10::kCUDA ? ", float16)" : ")");
  SCOB_FAST_CHECK_ARG(t.size(3) == 0 || t.stride(3) == 1, arg,
                      "the last dimension (D) must be contiguous (stride 1), got strides ", t.strides(),
                      "; call .contiguous()");
  SCOB_FAST_CHECK_ARG(t.size(2) <= 1 || t.stride(2) >= t.size(3), arg,
                      "rows (dimension L) overlap: strides ", t.strides(), "; call .contiguous()");
}

}  // namespace

Sizes check_forward_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& key_keep, double dropout_p, c10::DeviceType device) {
  check_qkv_like(q, "q", q, device);
  check_qkv_like(k, "k", q, device);
  check_qkv_like(v, "v", q, device);
  const Sizes s{q.size(0), q.size(1), q.size(2), q.size(3)};
  SCOB_FAST_CHECK_ARG(key_keep.scalar_type() == at::kBool, "key_keep", "expected dtype bool, got ",
                      key_keep.scalar_type());
  SCOB_FAST_CHECK_ARG(key_keep.dim() == 2 && key_keep.size(0) == s.B && key_keep.size(1) == s.L, "key_keep",
                      "expected shape [B, L] = [", s.B, ", ", s.L, "], got ", key_keep.sizes());
  SCOB_FAST_CHECK_ARG(key_keep.device() == q.device(), "key_keep", "device ", key_keep.device(),
                      " differs from q's ", q.device());
  SCOB_FAST_CHECK_ARG(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p", "expected 0 <= p < 1, got ", dropout_p);
  return s;
}

Sizes check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& key_keep, const at::Tensor& out,
                            const at::Tensor& lse, double dropout_p, c10::DeviceType device) {
  const Sizes s = check_forward_inputs(q, k, v, key_keep, dropout_p, device);
  check_qkv_like(grad_out, "grad_out", q, device);
  check_qkv_like(out, "out", q, device);
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  SCOB_FAST_CHECK_ARG(lse.scalar_type() == acc, "lse", "expected dtype ", acc, ", got ", lse.scalar_type());
  SCOB_FAST_CHECK_ARG(lse.dim() == 3 && lse.size(0) == s.B && lse.size(1) == s.H && lse.size(2) == s.L, "lse",
                      "expected shape [B, H, L] = [", s.B, ", ", s.H, ", ", s.L, "], got ", lse.sizes());
  SCOB_FAST_CHECK_ARG(lse.is_contiguous(), "lse", "must be contiguous");
  SCOB_FAST_CHECK_ARG(lse.device() == q.device(), "lse", "device ", lse.device(), " differs from q's ", q.device());
  return s;
}

}  // namespace scob_fast::masked_attention
