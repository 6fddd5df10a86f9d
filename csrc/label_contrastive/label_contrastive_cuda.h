// CUDA epilogues of the label-level contrastive loss tiles (label_contrastive_kernel.cu), called by
// the tile loop in label_contrastive_cuda.cpp. Built only with CUDA.
#pragma once

#include <ATen/ATen.h>

#include "label_contrastive/label_contrastive.h"

namespace scob_fast {
namespace label_contrastive {

// Folds one similarity tile [bn, bm] (overwritten with the denominator logits) into the row state
// [4, N] of anchors n0 .. n0 + bn: running max, sum of exp, positive logit sum, positive count.
template <typename acc_t>
void forward_tile_cuda(const at::Tensor& sims, const at::Tensor& state, int64_t n0, int64_t m0,
                       const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
                       const at::Tensor& weight_table, const Params<acc_t>& params);

// Replaces a similarity tile by grad_loss_i * d loss_i / d s_ij.
template <typename acc_t>
void backward_tile_cuda(const at::Tensor& sims, int64_t n0, int64_t m0, const at::Tensor& anchor_labels,
                        const at::Tensor& candidate_labels, const at::Tensor& weight_table, const at::Tensor& lse,
                        const at::Tensor& count, const at::Tensor& grad_loss, const Params<acc_t>& params);

}  // namespace label_contrastive
}  // namespace scob_fast
