// CUDA registration of label_contrastive_{fwd,bwd}: cuBLAS tiles driven by the shared tile loop,
// epilogues in label_contrastive_kernel.cu. Built only with CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "label_contrastive/label_contrastive_cuda.h"
#include "label_contrastive/label_contrastive_ops.h"
#include "label_contrastive/label_contrastive_tiles.h"

namespace scob_fast {
namespace label_contrastive {
namespace {

struct CudaOps {
  // A 4096 x 4096 float32 tile (64 MiB) keeps cuBLAS busy and is the only memory beyond O((N + M) D).
  static constexpr int64_t kTileN = 4096;
  static constexpr int64_t kTileM = 4096;

  // One stream: blocks run in order and share one candidate-gradient accumulator.
  static int64_t num_workers() { return 1; }

  template <class F>
  static void for_each_block(int64_t num_blocks, const F& body) {
    for (int64_t block = 0; block < num_blocks; ++block) body(block, 0);
  }

  template <typename acc_t>
  static void forward_tile(const Tensor& sims, const Tensor& state, int64_t n0, int64_t m0, const Tensor& anchor_labels,
                           const Tensor& candidate_labels, const Tensor& weight_table, const Params<acc_t>& p) {
    forward_tile_cuda<acc_t>(sims, state, n0, m0, anchor_labels, candidate_labels, weight_table, p);
  }

  template <typename acc_t>
  static void backward_tile(const Tensor& sims, int64_t n0, int64_t m0, const Tensor& anchor_labels,
                            const Tensor& candidate_labels, const Tensor& weight_table, const Tensor& lse,
                            const Tensor& count, const Tensor& grad_loss, const Params<acc_t>& p) {
    backward_tile_cuda<acc_t>(sims, n0, m0, anchor_labels, candidate_labels, weight_table, lse, count, grad_loss, p);
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(SCOB_FAST_LABEL_CONTRASTIVE_FWD_ARGS) {
  const c10::cuda::OptionalCUDAGuard guard(anchors.device());
  return forward_driver<CudaOps>(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive,
                                 temperature, logit_shift, logit_form, label_positives, exclude_self);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(SCOB_FAST_LABEL_CONTRASTIVE_BWD_ARGS) {
  const c10::cuda::OptionalCUDAGuard guard(anchors.device());
  return backward_driver<CudaOps>(grad_loss, anchors, anchor_labels, candidates, candidate_labels, class_weights,
                                  extra_positive, lse, count, temperature, logit_shift, logit_form, label_positives,
                                  exclude_self, need_anchors, need_candidates, need_extra);
}

}  // namespace label_contrastive
}  // namespace scob_fast

TORCH_LIBRARY_IMPL(scob_fast, CUDA, m) {
  m.impl("label_contrastive_fwd", &scob_fast::label_contrastive::forward_cuda);
  m.impl("label_contrastive_bwd", &scob_fast::label_contrastive::backward_cuda);
}
