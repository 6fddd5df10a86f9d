// The tile loop shared by the CPU and CUDA bodies of label_contrastive_{fwd,bwd}.
//
// Similarities are produced one [tile_n, tile_m] block at a time by the BLAS of the device
// (at::mm: MKL/oneDNN on CPU, cuBLAS on CUDA) and consumed at once by a device epilogue that keeps an
// online log-sum-exp per anchor; backward recomputes each block, turns it into d loss / d s in place
// and accumulates both input gradients with two GEMMs. Live memory is the inputs, their gradients,
// O(N) row state, one tile and one candidate-gradient accumulator per worker: O((N + M) * D), never
// N x M. Each anchor block belongs to one worker, so its rows of state and of d anchors need no lock.
//
// `Ops` supplies the device epilogues, tile sizes and how anchor blocks are spread over workers:
//   static constexpr int64_t kTileN, kTileM;
//   static int64_t num_workers();
//   template <class F> static void for_each_block(int64_t num_blocks, const F& body);  // body(block, worker)
//   static void forward_tile(const Tensor& sims, const Tensor& state, int64_t n0, int64_t m0,
//                            const Tensor& anchor_labels, const Tensor& candidate_labels,
//                            const Tensor& weight_table, const Params<acc_t>&);      // per acc_t
//   static void backward_tile(const Tensor& sims /* in: s, out: grad */, int64_t n0, int64_t m0,
//                             ..., const Tensor& lse, const Tensor& count, const Tensor& grad_loss);
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <optional>
#include <tuple>

#include "common/checks.h"
#include "label_contrastive/label_contrastive.h"

namespace scob_fast {
namespace label_contrastive {

using at::Tensor;

// Prefix of every argument error (SCOB_FAST_CHECK_ARG, common/checks.h).
inline constexpr const char* kOpName = "label_contrastive";

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

inline void check_inputs(const Tensor& anchors, const Tensor& anchor_labels, const Tensor& candidates,
                         const Tensor& candidate_labels, const std::optional<Tensor>& class_weights,
                         const std::optional<Tensor>& extra_positive, double temperature) {
  SCOB_FAST_CHECK_ARG(anchors.dim() == 2, "anchors", "must be [N, D], got shape ", anchors.sizes());
  SCOB_FAST_CHECK_ARG(is_supported_float(anchors.scalar_type()), "anchors",
                      "must be float32, float64, bfloat16 or float16, got ", anchors.scalar_type());
  const auto device = anchors.device();
  const int64_t n = anchors.size(0);
  SCOB_FAST_CHECK_ARG(candidates.dim() == 2 && candidates.size(1) == anchors.size(1), "candidates",
                      "must be [M, ", anchors.size(1), "] (same D as anchors), got shape ", candidates.sizes());
  SCOB_FAST_CHECK_ARG(candidates.scalar_type() == anchors.scalar_type(), "candidates",
                      "must have the anchors' dtype ", anchors.scalar_type(), ", got ", candidates.scalar_type());
  SCOB_FAST_CHECK_ARG(candidates.device() == device, "candidates", "must be on ", device, ", got ",
                      candidates.device());
  for (const auto& [t, name, size] : {std::tuple<const Tensor&, const char*, int64_t>{anchor_labels, "anchor_labels", n},
                                      {candidate_labels, "candidate_labels", candidates.size(0)}}) {
    SCOB_FAST_CHECK_ARG(t.dim() == 1 && t.size(0) == size, name, "must be [", size, "], got shape ", t.sizes());
    SCOB_FAST_CHECK_ARG(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), name,
                        "must hold integer labels, got ", t.scalar_type());
    SCOB_FAST_CHECK_ARG(t.device() == device, name, "must be on ", device, ", got ", t.device());
  }
  if (class_weights.has_value()) {
    const Tensor& w = *class_weights;
    SCOB_FAST_CHECK_ARG(w.dim() == 2 && w.size(0) == w.size(1), "class_weights", "must be [C, C], got shape ",
                        w.sizes());
    SCOB_FAST_CHECK_ARG(at::isFloatingType(w.scalar_type()), "class_weights", "must be floating point, got ",
                        w.scalar_type());
    SCOB_FAST_CHECK_ARG(w.device() == device, "class_weights", "must be on ", device, ", got ", w.device());
  }
  if (extra_positive.has_value()) {
    const Tensor& e = *extra_positive;
    SCOB_FAST_CHECK_ARG(e.dim() == 1 && e.size(0) == n, "extra_positive", "must be [", n,
                        "] (one logit per anchor), got shape ", e.sizes());
    SCOB_FAST_CHECK_ARG(at::isFloatingType(e.scalar_type()), "extra_positive", "must be floating point, got ",
                        e.scalar_type());
    SCOB_FAST_CHECK_ARG(e.device() == device, "extra_positive", "must be on ", device, ", got ", e.device());
  }
  SCOB_FAST_CHECK_ARG(temperature > 0.0, "temperature", "must be > 0, got ", temperature);
}

inline at::ScalarType acc_type(const Tensor& anchors) {
  return anchors.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Inputs converted once to what the tiles need (a copy only for low precision or odd layouts).
struct Prepared {
  Tensor a, c, ya, yc, weight_table, extra_logit;
};

inline Prepared prepare(const Tensor& anchors, const Tensor& anchor_labels, const Tensor& candidates,
                        const Tensor& candidate_labels, const std::optional<Tensor>& class_weights,
                        const std::optional<Tensor>& extra_positive, double temperature, double logit_shift,
                        bool logit_form) {
  const auto acc = acc_type(anchors);
  Prepared p;
  // Low-precision inputs are widened so that similarities are not rounded before the exponential.
  p.a = anchors.to(acc).contiguous();
  p.c = candidates.is_same(anchors) ? p.a : candidates.to(acc).contiguous();
  p.ya = anchor_labels.to(at::kLong).contiguous();
  p.yc = candidate_labels.is_same(anchor_labels) ? p.ya : candidate_labels.to(at::kLong).contiguous();
  if (class_weights.has_value()) {
    Tensor w = class_weights->to(acc).contiguous();
    // exp form: w * exp(x) = exp(x + log w), so the table holds log W (computed once, C x C).
    p.weight_table = logit_form ? w : w.log();
  }
  if (extra_positive.has_value()) {
    p.extra_logit = (extra_positive->to(acc) + logit_shift) * (1.0 / temperature);
  }
  return p;
}

template <typename acc_t>
Params<acc_t> make_params(const Prepared& p, double temperature, double logit_shift, bool logit_form,
                          bool label_positives, bool exclude_self) {
  Params<acc_t> params;
  params.inv_temperature = static_cast<acc_t>(1.0 / temperature);
  params.logit_shift = static_cast<acc_t>(logit_shift);
  params.num_classes = p.weight_table.defined() ? p.weight_table.size(0) : 0;
  params.logit_form = logit_form;
  params.label_positives = label_positives;
  params.exclude_self = exclude_self;
  params.has_extra = p.extra_logit.defined();
  return params;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Workers that can be busy at once (for_each_block never starts more than there are blocks), so
// that small calls do not allocate a tile per idle thread.
template <class Ops>
int64_t num_workers(int64_t n) {
  return std::max<int64_t>(1, std::min(Ops::num_workers(), ceil_div(n, Ops::kTileN)));
}

// A worker's tile buffer seen as a contiguous [bn, bm] matrix (GEMM output, then epilogue in place).
inline Tensor tile_view(const Tensor& tiles, int64_t worker, int64_t bn, int64_t bm) {
  return tiles[worker].narrow(0, 0, bn * bm).view({bn, bm});
}

template <class Ops>
std::tuple<Tensor, Tensor, Tensor> forward_driver(
    const Tensor& anchors, const Tensor& anchor_labels, const Tensor& candidates, const Tensor& candidate_labels,
    const std::optional<Tensor>& class_weights, const std::optional<Tensor>& extra_positive, double temperature,
    double logit_shift, bool logit_form, bool label_positives, bool exclude_self) {
  check_inputs(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature);
  // Everything below is this op's own arithmetic: autograd is handled by the op's registration.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Prepared p = prepare(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive,
                       temperature, logit_shift, logit_form);
  const int64_t n = p.a.size(0), m = p.c.size(0);
  const auto opts = p.a.options();
  const double inf = std::numeric_limits<double>::infinity();

  // Row state [4, N]: running max, sum of exp(g - max), positives' logit sum, positive count.
  Tensor ignored = p.ya.lt(0);
  Tensor state = at::empty({4, n}, opts);
  if (p.extra_logit.defined()) {
    state[0].copy_(p.extra_logit.masked_fill(ignored, -inf));
    state[1].copy_(at::logical_not(ignored));
    state[2].copy_(p.extra_logit.masked_fill(ignored, 0.0));
    state[3].copy_(at::logical_not(ignored));
  } else {
    state[0].fill_(-inf);
    state.narrow(0, 1, 3).zero_();
  }

  const int64_t workers = num_workers<Ops>(n);
  Tensor tiles = at::empty({workers, std::min(Ops::kTileN, n) * std::min(Ops::kTileM, m)}, opts);
  AT_DISPATCH_FLOATING_TYPES(p.a.scalar_type(), "label_contrastive_fwd", [&] {
    const auto params = make_params<scalar_t>(p, temperature, logit_shift, logit_form, label_positives, exclude_self);
    Ops::for_each_block(ceil_div(n, Ops::kTileN), [&](int64_t block, int64_t worker) {
      const int64_t n0 = block * Ops::kTileN, bn = std::min(Ops::kTileN, n - n0);
      const Tensor a_blk = p.a.narrow(0, n0, bn);
      for (int64_t m0 = 0; m0 < m; m0 += Ops::kTileM) {
        const int64_t bm = std::min(Ops::kTileM, m - m0);
        Tensor sims = tile_view(tiles, worker, bn, bm);
        at::mm_out(sims, a_blk, p.c.narrow(0, m0, bm).t());
        Ops::template forward_tile<scalar_t>(sims, state, n0, m0, p.ya, p.yc, p.weight_table, params);
      }
    });
  });

  Tensor lse = at::where(state[0].eq(-inf), state[0], state[0] + state[1].log());
  Tensor excluded = at::logical_or(ignored, state[3].eq(0));
  Tensor count = state[3].masked_fill(excluded, 0.0);
  Tensor loss = (lse - state[2] / state[3].clamp_min(1.0)).masked_fill(excluded, 0.0);
  return {loss, lse, count};
}

template <class Ops>
std::tuple<Tensor, Tensor, Tensor> backward_driver(
    const Tensor& grad_loss, const Tensor& anchors, const Tensor& anchor_labels, const Tensor& candidates,
    const Tensor& candidate_labels, const std::optional<Tensor>& class_weights,
    const std::optional<Tensor>& extra_positive, const Tensor& lse, const Tensor& count, double temperature,
    double logit_shift, bool logit_form, bool label_positives, bool exclude_self, bool need_anchors,
    bool need_candidates, bool need_extra) {
  check_inputs(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive, temperature);
  const int64_t n = anchors.size(0), m = candidates.size(0), d = anchors.size(1);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{grad_loss, "grad_loss"}, {lse, "lse"},
                                {count, "count"}}) {
    SCOB_FAST_CHECK_ARG(t.dim() == 1 && t.size(0) == n, name, "must be [", n, "], got shape ", t.sizes());
    SCOB_FAST_CHECK_ARG(t.device() == anchors.device(), name, "must be on ", anchors.device(), ", got ",
                        t.device());
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Prepared p = prepare(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive,
                       temperature, logit_shift, logit_form);
  const auto opts = p.a.options();
  const Tensor lse_acc = lse.to(opts.dtype()).contiguous();
  const Tensor count_acc = count.to(opts.dtype()).contiguous();
  // Excluded anchors (count 0) get no gradient whatever flows into their (zero) loss.
  const Tensor grad = grad_loss.to(opts.dtype()).masked_fill(count_acc.eq(0), 0.0).contiguous();

  const int64_t workers = num_workers<Ops>(n);
  Tensor grad_a = need_anchors ? at::zeros({n, d}, opts) : at::empty({0}, anchors.options());
  // One candidate-gradient accumulator per worker: every anchor block touches every candidate row.
  Tensor grad_c_parts = need_candidates ? at::zeros({workers, m, d}, opts) : Tensor();
  if (need_anchors || need_candidates) {
    Tensor tiles = at::empty({workers, std::min(Ops::kTileN, n) * std::min(Ops::kTileM, m)}, opts);
    AT_DISPATCH_FLOATING_TYPES(p.a.scalar_type(), "label_contrastive_bwd", [&] {
      const auto params = make_params<scalar_t>(p, temperature, logit_shift, logit_form, label_positives,
                                                exclude_self);
      Ops::for_each_block(ceil_div(n, Ops::kTileN), [&](int64_t block, int64_t worker) {
        const int64_t n0 = block * Ops::kTileN, bn = std::min(Ops::kTileN, n - n0);
        const Tensor a_blk = p.a.narrow(0, n0, bn);
        for (int64_t m0 = 0; m0 < m; m0 += Ops::kTileM) {
          const int64_t bm = std::min(Ops::kTileM, m - m0);
          const Tensor c_blk = p.c.narrow(0, m0, bm);
          Tensor tile = tile_view(tiles, worker, bn, bm);
          at::mm_out(tile, a_blk, c_blk.t());
          Ops::template backward_tile<scalar_t>(tile, n0, m0, p.ya, p.yc, p.weight_table, lse_acc, count_acc, grad,
                                                params);
          if (need_anchors) grad_a.narrow(0, n0, bn).addmm_(tile, c_blk);
          if (need_candidates) grad_c_parts[worker].narrow(0, m0, bm).addmm_(tile.t(), a_blk);
        }
      });
    });
  }
  Tensor grad_c = !need_candidates ? at::empty({0}, candidates.options())
                  : workers == 1   ? grad_c_parts[0]
                                   : grad_c_parts.sum(0);
  Tensor grad_e;
  if (need_extra && p.extra_logit.defined()) {
    // d loss_i / d e_i = (softmax weight of the extra positive - 1 / |P_i|) / t
    Tensor inv_count = count_acc.clamp_min(1.0).reciprocal();
    grad_e = (grad * ((p.extra_logit - lse_acc).exp() - inv_count) * (1.0 / temperature))
                 .masked_fill(count_acc.eq(0), 0.0)
                 .to(extra_positive->scalar_type());
  } else {
    grad_e = at::empty({0}, anchors.options());
  }
  if (need_anchors) grad_a = grad_a.to(anchors.scalar_type());
  if (need_candidates) grad_c = grad_c.to(candidates.scalar_type());
  return {grad_a, grad_c, grad_e};
}

}  // namespace label_contrastive
}  // namespace scob_fast
