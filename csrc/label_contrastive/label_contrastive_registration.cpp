// Schemas of the label-level contrastive loss kernels and their CPU bodies. The public op, its
// autograd and fake kernels are in scob_fast/ops/label_contrastive.py (registered, on these ops and on
// the Triton ops of the same schemas, by scob_fast/ops/_kernel_op.py).
#include <torch/library.h>

#include "label_contrastive/label_contrastive_ops.h"

TORCH_LIBRARY_FRAGMENT(scob_fast, m) {
  // Per-anchor loss (0 for excluded anchors), log-sum-exp of the denominator and positive count
  // (0 = excluded); lse and count are what backward needs instead of the N x M probabilities.
  m.def(
      "label_contrastive_fwd(Tensor anchors, Tensor anchor_labels, Tensor candidates, Tensor candidate_labels, "
      "Tensor? class_weights, Tensor? extra_positive, float temperature, float logit_shift, bool logit_form, "
      "bool label_positives, bool exclude_self) -> (Tensor loss, Tensor lse, Tensor count)");
  // Gradients of sum_i grad_loss[i] * loss[i]; a gradient that is not needed comes back empty.
  m.def(
      "label_contrastive_bwd(Tensor grad_loss, Tensor anchors, Tensor anchor_labels, Tensor candidates, "
      "Tensor candidate_labels, Tensor? class_weights, Tensor? extra_positive, Tensor lse, Tensor count, "
      "float temperature, float logit_shift, bool logit_form, bool label_positives, bool exclude_self, "
      "bool need_anchors, bool need_candidates, bool need_extra) "
      "-> (Tensor grad_anchors, Tensor grad_candidates, Tensor grad_extra)");
}

TORCH_LIBRARY_IMPL(scob_fast, CPU, m) {
  m.impl("label_contrastive_fwd", &scob_fast::label_contrastive::forward_cpu);
  m.impl("label_contrastive_bwd", &scob_fast::label_contrastive::backward_cpu);
}
