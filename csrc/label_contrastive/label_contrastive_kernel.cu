// CUDA epilogues of the label-level contrastive loss: the GEMM of each tile is cuBLAS (at::mm in
// label_contrastive_tiles.h); these kernels apply the per-pair arithmetic of label_contrastive.h to
// it, one block per anchor row in forward (the row reductions) and elementwise in backward.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "label_contrastive/label_contrastive.h"
#include "label_contrastive/label_contrastive_cuda.h"

namespace scob_fast {
namespace label_contrastive {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Reduces v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* scratch) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / kWarp) ? scratch[lane] : identity;
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

template <typename acc_t>
__global__ void label_contrastive_fwd_tile_kernel(acc_t* __restrict__ sims, int64_t bm, int64_t n0, int64_t m0,
                                                  const int64_t* __restrict__ anchor_labels,
                                                  const int64_t* __restrict__ candidate_labels,
                                                  const acc_t* __restrict__ weight_table, Params<acc_t> p,
                                                  acc_t* __restrict__ state, int64_t n) {
  __shared__ acc_t scratch[kThreads / kWarp];
  const int64_t r = blockIdx.x;
  const int64_t i = n0 + r;
  const int64_t y_i = anchor_labels[i];
  if (y_i < 0) return;  // uniform over the block: no thread reaches a barrier
  acc_t* row = sims + r * bm;
  const acc_t* w_row = weight_table != nullptr ? weight_table + y_i * p.num_classes : nullptr;
  acc_t local_max = neg_inf<acc_t>(), pos_sum = 0, pos_count = 0;
  for (int64_t j = threadIdx.x; j < bm; j += blockDim.x) {
    acc_t g, h, dg_ds;
    bool positive;
    pair_terms(row[j], i, m0 + j, y_i, candidate_labels[m0 + j], w_row, p, g, h, dg_ds, positive);
    row[j] = g;
    local_max = g > local_max ? g : local_max;
    if (positive) {
      pos_sum += h;
      pos_count += acc_t(1);
    }
  }
  const acc_t tile_max = block_reduce(local_max, MaxOp(), neg_inf<acc_t>(), scratch);
  acc_t local_sum = 0;
  if (tile_max != neg_inf<acc_t>()) {
    // Each thread reads back only the entries it wrote above.
    for (int64_t j = threadIdx.x; j < bm; j += blockDim.x) local_sum += exp(row[j] - tile_max);
  }
  const acc_t tile_sum = block_reduce(local_sum, SumOp(), acc_t(0), scratch);
  pos_sum = block_reduce(pos_sum, SumOp(), acc_t(0), scratch);
  pos_count = block_reduce(pos_count, SumOp(), acc_t(0), scratch);
  if (threadIdx.x == 0) {
    RowState<acc_t> st{state[i], state[n + i], state[2 * n + i], state[3 * n + i]};
    merge_lse(st, tile_max, tile_sum);
    state[i] = st.max;
    state[n + i] = st.sum;
    state[2 * n + i] = st.pos_sum + pos_sum;
    state[3 * n + i] = st.pos_count + pos_count;
  }
}

template <typename acc_t>
__global__ void label_contrastive_bwd_tile_kernel(acc_t* __restrict__ sims, int64_t bn, int64_t bm, int64_t n0,
                                                  int64_t m0, const int64_t* __restrict__ anchor_labels,
                                                  const int64_t* __restrict__ candidate_labels,
                                                  const acc_t* __restrict__ weight_table,
                                                  const acc_t* __restrict__ lse, const acc_t* __restrict__ count,
                                                  const acc_t* __restrict__ grad_loss, Params<acc_t> p) {
  const int64_t total = bn * bm;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t r = idx / bm, j = idx - r * bm;
    const int64_t i = n0 + r, y_i = anchor_labels[i];
    const acc_t grad = grad_loss[i];
    if (y_i < 0 || grad == acc_t(0)) {
      sims[idx] = acc_t(0);
      continue;
    }
    const acc_t* w_row = weight_table != nullptr ? weight_table + y_i * p.num_classes : nullptr;
    sims[idx] = pair_grad(sims[idx], i, m0 + j, y_i, candidate_labels[m0 + j], w_row, p, lse[i],
                          acc_t(1) / count[i], grad);
  }
}

template <typename acc_t>
const acc_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<acc_t>() : nullptr;
}

}  // namespace

template <typename acc_t>
void forward_tile_cuda(const at::Tensor& sims, const at::Tensor& state, int64_t n0, int64_t m0,
                       const at::Tensor& anchor_labels, const at::Tensor& candidate_labels,
                       const at::Tensor& weight_table, const Params<acc_t>& params) {
  const int64_t bn = sims.size(0), bm = sims.size(1);
  if (bn == 0 || bm == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  label_contrastive_fwd_tile_kernel<acc_t><<<static_cast<unsigned int>(bn), kThreads, 0, stream>>>(
      sims.data_ptr<acc_t>(), bm, n0, m0, anchor_labels.data_ptr<int64_t>(), candidate_labels.data_ptr<int64_t>(),
      optional_ptr<acc_t>(weight_table), params, state.data_ptr<acc_t>(), state.size(1));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void backward_tile_cuda(const at::Tensor& sims, int64_t n0, int64_t m0, const at::Tensor& anchor_labels,
                        const at::Tensor& candidate_labels, const at::Tensor& weight_table, const at::Tensor& lse,
                        const at::Tensor& count, const at::Tensor& grad_loss, const Params<acc_t>& params) {
  const int64_t bn = sims.size(0), bm = sims.size(1);
  if (bn == 0 || bm == 0) return;
  const int64_t blocks = std::min<int64_t>((bn * bm + kThreads - 1) / kThreads, 65535);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  label_contrastive_bwd_tile_kernel<acc_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
      sims.data_ptr<acc_t>(), bn, bm, n0, m0, anchor_labels.data_ptr<int64_t>(),
      candidate_labels.data_ptr<int64_t>(), optional_ptr<acc_t>(weight_table), lse.data_ptr<acc_t>(),
      count.data_ptr<acc_t>(), grad_loss.data_ptr<acc_t>(), params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void forward_tile_cuda<float>(const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, const Params<float>&);
template void forward_tile_cuda<double>(const at::Tensor&, const at::Tensor&, int64_t, int64_t, const at::Tensor&,
                                        const at::Tensor&, const at::Tensor&, const Params<double>&);
template void backward_tile_cuda<float>(const at::Tensor&, int64_t, int64_t, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const Params<float>&);
template void backward_tile_cuda<double>(const at::Tensor&, int64_t, int64_t, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const Params<double>&);

}  // namespace label_contrastive
}  // namespace scob_fast
