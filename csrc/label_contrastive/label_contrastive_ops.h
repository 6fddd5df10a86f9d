// Entry points of label_contrastive_{fwd,bwd} per device (registered in
// label_contrastive_registration.cpp and label_contrastive_cuda.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace scob_fast {
namespace label_contrastive {

#define SCOB_FAST_LABEL_CONTRASTIVE_FWD_ARGS                                                              \
  const at::Tensor &anchors, const at::Tensor &anchor_labels, const at::Tensor &candidates,               \
      const at::Tensor &candidate_labels, const std::optional<at::Tensor> &class_weights,                 \
      const std::optional<at::Tensor> &extra_positive, double temperature, double logit_shift,            \
      bool logit_form, bool label_positives, bool exclude_self

#define SCOB_FAST_LABEL_CONTRASTIVE_BWD_ARGS                                                              \
  const at::Tensor &grad_loss, const at::Tensor &anchors, const at::Tensor &anchor_labels,                \
      const at::Tensor &candidates, const at::Tensor &candidate_labels,                                   \
      const std::optional<at::Tensor> &class_weights, const std::optional<at::Tensor> &extra_positive,    \
      const at::Tensor &lse, const at::Tensor &count, double temperature, double logit_shift,             \
      bool logit_form, bool label_positives, bool exclude_self, bool need_anchors, bool need_candidates,  \
      bool need_extra

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(SCOB_FAST_LABEL_CONTRASTIVE_FWD_ARGS);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(SCOB_FAST_LABEL_CONTRASTIVE_BWD_ARGS);

#ifdef SCOB_FAST_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(SCOB_FAST_LABEL_CONTRASTIVE_FWD_ARGS);
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(SCOB_FAST_LABEL_CONTRASTIVE_BWD_ARGS);
#endif

}  // namespace label_contrastive
}  // namespace scob_fast
