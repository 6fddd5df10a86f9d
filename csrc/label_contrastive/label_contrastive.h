// Batched label-level contrastive loss: the per-pair and per-anchor arithmetic shared by the CPU
// body (label_contrastive_cpu.cpp), the CUDA epilogue kernels (label_contrastive_kernel.cu) and the
// tile loop that drives both (label_contrastive_tiles.h).
//
// For anchor i and allowed candidate j with similarity s_ij (a tile of anchors @ candidates^T):
//   exp form:   g_ij = (s_ij + shift) / t + log W[y_i, y_j]    h_ij = (s_ij + shift) / t
//   logit form: g_ij = h_ij = (s_ij + shift) * W[y_i, y_j] / t
// g enters the denominator (log-sum-exp over allowed j, plus the extra positive e_i' = (e_i + shift)/t),
// h is the numerator logit of a positive. loss_i = lse_i - (sum_{p in P_i} h_ip + e_i') / |P_i|.
// Backward: d loss_i / d s_ij = (softmax_ij - [j in P_i] / |P_i|) * dg/ds, with dg/ds = 1/t (exp form)
// or W/t (logit form); d loss_i / d e_i = (softmax_i0 - 1/|P_i|) / t. Nothing here is N x M.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#ifdef __CUDACC__
#define LC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LC_HOST_DEVICE inline
#endif

namespace scob_fast {
namespace label_contrastive {

template <typename acc_t>
struct Params {
  acc_t inv_temperature;
  acc_t logit_shift;
  int64_t num_classes;       // rows/cols of the weight matrix (0 when there is none)
  bool logit_form;           // weights scale the logit (Scob) instead of the exponential
  bool label_positives;      // candidates with the anchor's label are positives
  bool exclude_self;         // candidate j == anchor i is not allowed
  bool has_extra;            // one extra positive logit per anchor
};

template <typename acc_t>
LC_HOST_DEVICE acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Weight rows are pre-indexed by the anchor's label: w_row = W + y_i * C (log W for the exp form).
// Returns false (and g = -inf) when the pair is not allowed.
template <typename acc_t>
LC_HOST_DEVICE bool pair_terms(acc_t s, int64_t i, int64_t j, int64_t y_i, int64_t y_j,
                               const acc_t* w_row, const Params<acc_t>& p,
                               acc_t& g, acc_t& h, acc_t& dg_ds, bool& positive) {
  positive = false;
  if (y_j < 0 || (p.exclude_self && i == j)) {
    g = neg_inf<acc_t>();
    return false;
  }
  const acc_t z = (s + p.logit_shift) * p.inv_temperature;
  if (p.logit_form) {
    const acc_t w = w_row != nullptr ? w_row[y_j] : acc_t(1);
    g = h = z * w;
    dg_ds = w * p.inv_temperature;
  } else {
    // w_row holds log W here (precomputed once): log 0 = -inf drops the term from the sum.
    g = w_row != nullptr ? z + w_row[y_j] : z;
    h = z;
    dg_ds = p.inv_temperature;
  }
  positive = p.label_positives && y_j == y_i;
  return true;
}

// Running per-anchor state of the online log-sum-exp over candidate tiles.
template <typename acc_t>
struct RowState {
  acc_t max;       // running maximum of g
  acc_t sum;       // sum of exp(g - max)
  acc_t pos_sum;   // sum of the positives' numerator logits h (and e')
  acc_t pos_count; // number of positives (counting the extra one)
};

template <typename acc_t>
LC_HOST_DEVICE RowState<acc_t> initial_state(bool anchor_ignored, bool has_extra, acc_t extra_logit) {
  RowState<acc_t> st{neg_inf<acc_t>(), acc_t(0), acc_t(0), acc_t(0)};
  if (!anchor_ignored && has_extra) {
    st.max = extra_logit;
    st.sum = acc_t(1);
    st.pos_sum = extra_logit;
    st.pos_count = acc_t(1);
  }
  return st;
}

// Merges a tile's (max, sum of exp(g - tile_max)) into the running state.
template <typename acc_t>
LC_HOST_DEVICE void merge_lse(RowState<acc_t>& st, acc_t tile_max, acc_t tile_sum) {
  if (tile_max == neg_inf<acc_t>()) return;
  if (tile_max > st.max) {
    // exp(-inf - finite) = 0 handles the first tile.
    st.sum = st.sum * std::exp(st.max - tile_max) + tile_sum;
    st.max = tile_max;
  } else {
    st.sum += tile_sum * std::exp(tile_max - st.max);
  }
}

// loss_i, lse_i and |P_i| (0 marks an excluded anchor: ignored label or no positive).
template <typename acc_t>
LC_HOST_DEVICE void finalize(const RowState<acc_t>& st, bool anchor_ignored,
                             acc_t& loss, acc_t& lse, acc_t& count) {
  lse = st.max == neg_inf<acc_t>() ? st.max : st.max + std::log(st.sum);
  if (anchor_ignored || st.pos_count == acc_t(0)) {
    loss = acc_t(0);
    count = acc_t(0);
  } else {
    loss = lse - st.pos_sum / st.pos_count;
    count = st.pos_count;
  }
}

// d loss_i / d s_ij times the incoming gradient; 0 for pairs that are not allowed.
template <typename acc_t>
LC_HOST_DEVICE acc_t pair_grad(acc_t s, int64_t i, int64_t j, int64_t y_i, int64_t y_j,
                               const acc_t* w_row, const Params<acc_t>& p,
                               acc_t lse, acc_t inv_count, acc_t grad) {
  acc_t g, h, dg_ds;
  bool positive;
  if (!pair_terms(s, i, j, y_i, y_j, w_row, p, g, h, dg_ds, positive)) return acc_t(0);
  const acc_t prob = std::exp(g - lse);
  return grad * (prob - (positive ? inv_count : acc_t(0))) * dg_ds;
}

}  // namespace label_contrastive
}  // namespace scob_fast
