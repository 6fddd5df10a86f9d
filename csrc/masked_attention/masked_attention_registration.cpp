// Schemas of the masked-attention op and its CPU bodies. The CUDA bodies register from
// masked_attention_cuda.cpp (CUDA builds only); autograd and the fake (meta) kernels are registered
// from Python (scob_fast/ops/masked_attention.py, through scob_fast/ops/_kernel_op.py, which gives the
// Triton ops of the same schemas the same ones).
#include <torch/library.h>

#include "masked_attention/masked_attention.h"

TORCH_LIBRARY_FRAGMENT(scob_fast, m) {
  m.def("masked_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor key_keep, float scale, "
        "float dropout_p, int seed) -> (Tensor out, Tensor lse)");
  m.def("masked_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor key_keep, "
        "Tensor out, Tensor lse, float scale, float dropout_p, int seed) -> (Tensor grad_q, Tensor grad_k, "
        "Tensor grad_v)");
}

TORCH_LIBRARY_IMPL(scob_fast, CPU, m) {
  m.impl("masked_attention_fwd", &scob_fast::masked_attention::masked_attention_fwd_cpu);
  m.impl("masked_attention_bwd", &scob_fast::masked_attention::masked_attention_bwd_cpu);
}
