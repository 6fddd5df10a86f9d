// CPU body of label_contrastive_{fwd,bwd}: anchor blocks spread over ATen's threads, each running
// single-threaded MKL GEMM tiles (label_contrastive_tiles.h) and the row epilogues below.
//
// Why blocks per thread rather than threaded GEMMs on shared tiles: one parallel region per call
// instead of two barriers per tile, which is what decides speed on a small, shared machine.
// Why the float rows look the way they do: the extension is built for baseline x86-64 (no -mavx2),
// so the float epilogues are compiled three times (AVX-512, AVX2, baseline) with GCC target clones
// picked at load time, written branch-free with an exp that vectorises (std::exp does not).
// float64 (gradcheck) takes the plain per-pair path of label_contrastive.h.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>

#include "label_contrastive/label_contrastive_ops.h"
#include "label_contrastive/label_contrastive_tiles.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LC_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LC_TARGET_CLONES
#endif
#define LC_ALWAYS_INLINE inline __attribute__((always_inline))

namespace scob_fast {
namespace label_contrastive {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0-ish arguments of a softmax, branch-free so that loops vectorise: Cody-Waite
// reduction x = k ln2 + r, |r| <= ln2 / 2, and Cephes' degree-6 polynomial for exp(r) (about 1 ulp
// over the range). Arguments below -87 (including -inf) give exactly 0.
LC_ALWAYS_INLINE float exp_f32(float x) {
  // ternaries, not std::min/max: nothing out of line may be compiled for a wider ISA than the caller's
  const float lo = x > -87.0f ? x : -87.0f;
  const float xc = lo < 88.0f ? lo : 88.0f;
  // round(xc / ln2) by the 1.5 * 2^23 trick (no floor/round instruction needed on baseline x86-64)
  const float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

// One anchor row of a tile, float32.
struct RowArgs {
  const int64_t* y_c;   // candidate labels of the tile
  const float* w_row;   // weight-table row of the anchor's label (W, or log W for the exp form); null if none
  int64_t bm;           // tile width
  int64_t self_j;       // column of the anchor itself when it must be excluded, else -1
  int64_t y_i;          // anchor label
  float inv_t, shift;
  bool label_positives;
};

// Pair terms of label_contrastive.h in branch-free form; HAS_W && LOGIT is Scob's weighted logit.
template <bool HAS_W, bool LOGIT>
LC_ALWAYS_INLINE void pair_terms_f32(const RowArgs& a, int64_t j, float s, bool& allowed, bool& positive, float& g,
                                     float& h, float& dg_ds) {
  const int64_t y = a.y_c[j];
  allowed = (y >= 0) & (j != a.self_j);
  positive = a.label_positives & allowed & (y == a.y_i);
  const float z = (s + a.shift) * a.inv_t;
  g = h = z;
  dg_ds = a.inv_t;
  if constexpr (HAS_W) {
    const float w = a.w_row[y < 0 ? 0 : y];
    if constexpr (LOGIT) {
      g = h = z * w;
      dg_ds = w * a.inv_t;
    } else {
      g = z + w;
    }
  }
}

// row: similarities in, denominator logits out. out = {tile max, sum exp(g - max), positive h sum, count}.
template <bool HAS_W, bool LOGIT>
LC_ALWAYS_INLINE void forward_row_body(float* row, const RowArgs& a, float* out) {
  float tile_max = kNegInf, pos_sum = 0.0f, pos_count = 0.0f;
#pragma omp simd reduction(max : tile_max) reduction(+ : pos_sum, pos_count)
  for (int64_t j = 0; j < a.bm; ++j) {
    bool allowed, positive;
    float g, h, dg_ds;
    pair_terms_f32<HAS_W, LOGIT>(a, j, row[j], allowed, positive, g, h, dg_ds);
    pos_sum += positive ? h : 0.0f;
    pos_count += positive ? 1.0f : 0.0f;
    g = allowed ? g : kNegInf;
    row[j] = g;
    tile_max = tile_max > g ? tile_max : g;
  }
  float tile_sum = 0.0f;
  if (tile_max != kNegInf) {
#pragma omp simd reduction(+ : tile_sum)
    for (int64_t j = 0; j < a.bm; ++j) tile_sum += exp_f32(row[j] - tile_max);
  }
  out[0] = tile_max;
  out[1] = tile_sum;
  out[2] = pos_sum;
  out[3] = pos_count;
}

// row: similarities in, grad * d loss / d s out.
template <bool HAS_W, bool LOGIT>
LC_ALWAYS_INLINE void backward_row_body(float* row, const RowArgs& a, float lse, float inv_count, float grad) {
#pragma omp simd
  for (int64_t j = 0; j < a.bm; ++j) {
    bool allowed, positive;
    float g, h, dg_ds;
    pair_terms_f32<HAS_W, LOGIT>(a, j, row[j], allowed, positive, g, h, dg_ds);
    const float prob = exp_f32(g - lse);
    const float d = grad * (prob - (positive ? inv_count : 0.0f)) * dg_ds;
    row[j] = allowed ? d : 0.0f;
  }
}

LC_TARGET_CLONES void forward_row_f32(float* row, const RowArgs& a, bool logit_form, float* out) {
  if (a.w_row == nullptr) {
    forward_row_body<false, false>(row, a, out);  // without weights both forms are the same
  } else if (logit_form) {
    forward_row_body<true, true>(row, a, out);
  } else {
    forward_row_body<true, false>(row, a, out);
  }
}

LC_TARGET_CLONES void backward_row_f32(float* row, const RowArgs& a, bool logit_form, float lse, float inv_count,
                                       float grad) {
  if (a.w_row == nullptr) {
    backward_row_body<false, false>(row, a, lse, inv_count, grad);
  } else if (logit_form) {
    backward_row_body<true, true>(row, a, lse, inv_count, grad);
  } else {
    backward_row_body<true, false>(row, a, lse, inv_count, grad);
  }
}

template <typename acc_t>
RowArgs row_args(const Params<acc_t>& p, const int64_t* y_c, const acc_t* w, int64_t bm, int64_t i, int64_t m0,
                 int64_t y_i) {
  RowArgs a;
  a.y_c = y_c;
  a.w_row = w != nullptr ? reinterpret_cast<const float*>(w) + y_i * p.num_classes : nullptr;
  a.bm = bm;
  a.self_j = (p.exclude_self && i >= m0 && i < m0 + bm) ? i - m0 : -1;
  a.y_i = y_i;
  a.inv_t = static_cast<float>(p.inv_temperature);
  a.shift = static_cast<float>(p.logit_shift);
  a.label_positives = p.label_positives;
  return a;
}

struct CpuOps {
  // 256 x 2048 float32 = 2 MiB per worker: the epilogue reads the tile back from L2 while it is hot,
  // and the single-threaded GEMMs are large enough for MKL's peak.
  static constexpr int64_t kTileN = 256;
  static constexpr int64_t kTileM = 2048;

  static int64_t num_workers() { return at::get_num_threads(); }

  // Blocks are taken from a shared counter, so a thread slowed down by other load does less of them.
  template <class F>
  static void for_each_block(int64_t num_blocks, const F& body) {
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min<int64_t>(num_workers(), num_blocks), 1, [&](int64_t, int64_t) {
      // Worker threads do not inherit the caller's dispatch state: the GEMMs below are kernels of
      // this op, never something autograd should see (inputs may require grad).
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      const c10::NoGradGuard no_grad;
      const int64_t worker = at::get_thread_num();
      for (int64_t block = next.fetch_add(1); block < num_blocks; block = next.fetch_add(1)) body(block, worker);
    });
  }

  template <typename acc_t>
  static void forward_tile(const Tensor& sims, const Tensor& state, int64_t n0, int64_t m0, const Tensor& anchor_labels,
                           const Tensor& candidate_labels, const Tensor& weight_table, const Params<acc_t>& p) {
    const int64_t bn = sims.size(0), bm = sims.size(1), n = state.size(1);
    acc_t* s = sims.data_ptr<acc_t>();
    acc_t* st = state.data_ptr<acc_t>();
    const int64_t* ya = anchor_labels.data_ptr<int64_t>();
    const int64_t* yc = candidate_labels.data_ptr<int64_t>() + m0;
    const acc_t* w = weight_table.defined() ? weight_table.data_ptr<acc_t>() : nullptr;
    for (int64_t r = 0; r < bn; ++r) {
      const int64_t i = n0 + r, y_i = ya[i];
      if (y_i < 0) continue;
      acc_t* row = s + r * bm;
      acc_t tile_max = neg_inf<acc_t>(), tile_sum = 0, pos_sum = 0, pos_count = 0;
      if constexpr (std::is_same_v<acc_t, float>) {
        float out[4];
        forward_row_f32(row, row_args(p, yc, w, bm, i, m0, y_i), p.logit_form, out);
        tile_max = out[0];
        tile_sum = out[1];
        pos_sum = out[2];
        pos_count = out[3];
      } else {
        const acc_t* w_row = w != nullptr ? w + y_i * p.num_classes : nullptr;
        for (int64_t j = 0; j < bm; ++j) {
          acc_t g, h, dg_ds;
          bool positive;
          pair_terms(row[j], i, m0 + j, y_i, yc[j], w_row, p, g, h, dg_ds, positive);
          row[j] = g;
          tile_max = std::max(tile_max, g);
          if (positive) {
            pos_sum += h;
            pos_count += 1;
          }
        }
        if (tile_max != neg_inf<acc_t>()) {
          for (int64_t j = 0; j < bm; ++j) tile_sum += std::exp(row[j] - tile_max);
        }
      }
      RowState<acc_t> rs{st[i], st[n + i], st[2 * n + i], st[3 * n + i]};
      merge_lse(rs, tile_max, tile_sum);
      st[i] = rs.max;
      st[n + i] = rs.sum;
      st[2 * n + i] = rs.pos_sum + pos_sum;
      st[3 * n + i] = rs.pos_count + pos_count;
    }
  }

  template <typename acc_t>
  static void backward_tile(const Tensor& sims, int64_t n0, int64_t m0, const Tensor& anchor_labels,
                            const Tensor& candidate_labels, const Tensor& weight_table, const Tensor& lse,
                            const Tensor& count, const Tensor& grad_loss, const Params<acc_t>& p) {
    const int64_t bn = sims.size(0), bm = sims.size(1);
    acc_t* s = sims.data_ptr<acc_t>();
    const int64_t* ya = anchor_labels.data_ptr<int64_t>();
    const int64_t* yc = candidate_labels.data_ptr<int64_t>() + m0;
    const acc_t* w = weight_table.defined() ? weight_table.data_ptr<acc_t>() : nullptr;
    const acc_t* lse_p = lse.data_ptr<acc_t>();
    const acc_t* count_p = count.data_ptr<acc_t>();
    const acc_t* grad_p = grad_loss.data_ptr<acc_t>();
    for (int64_t r = 0; r < bn; ++r) {
      const int64_t i = n0 + r, y_i = ya[i];
      acc_t* row = s + r * bm;
      const acc_t grad = grad_p[i];
      if (y_i < 0 || grad == acc_t(0)) {
        std::fill(row, row + bm, acc_t(0));
        continue;
      }
      const acc_t inv_count = acc_t(1) / count_p[i];
      if constexpr (std::is_same_v<acc_t, float>) {
        backward_row_f32(row, row_args(p, yc, w, bm, i, m0, y_i), p.logit_form, lse_p[i], inv_count, grad);
      } else {
        const acc_t* w_row = w != nullptr ? w + y_i * p.num_classes : nullptr;
        for (int64_t j = 0; j < bm; ++j) {
          row[j] = pair_grad(row[j], i, m0 + j, y_i, yc[j], w_row, p, lse_p[i], inv_count, grad);
        }
      }
    }
  }
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor> forward_cpu(SCOB_FAST_LABEL_CONTRASTIVE_FWD_ARGS) {
  return forward_driver<CpuOps>(anchors, anchor_labels, candidates, candidate_labels, class_weights, extra_positive,
                                temperature, logit_shift, logit_form, label_positives, exclude_self);
}

std::tuple<Tensor, Tensor, Tensor> backward_cpu(SCOB_FAST_LABEL_CONTRASTIVE_BWD_ARGS) {
  return backward_driver<CpuOps>(grad_loss, anchors, anchor_labels, candidates, candidate_labels, class_weights,
                                 extra_positive, lse, count, temperature, logit_shift, logit_form, label_positives,
                                 exclude_self, need_anchors, need_candidates, need_extra);
}

}  // namespace label_contrastive
}  // namespace scob_fast
