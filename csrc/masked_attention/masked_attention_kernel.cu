// CUDA bodies of masked attention: a plain SIMT design (no tensor cores yet), one warp per query row
// (forward, dQ) or per kept key (dK, dV), kept keys / query rows staged through shared memory in tiles
// of 32 so that lane j owns tile row j. Keys are read through each sample's list of kept positions,
// so masked keys cost nothing. Compiled for sm_80 / sm_90 by CI; not yet run or timed on a GPU.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "masked_attention/masked_attention.h"
#include "masked_attention/masked_attention_cuda.h"

namespace scob_fast::masked_attention {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 4;           // warps per block
constexpr int kTile = 32;           // kept keys (or query rows) per shared-memory tile
constexpr int kMaxD = 128;          // head dim limit of this kernel
constexpr int kPerLane = kMaxD / kWarp;
constexpr int kPad = kMaxD + 1;     // +1 float: lanes reading the same column of different rows hit different banks

struct Params {
  int64_t H, L, D;
  int64_t sqb, sqh, sql, skb, skh, skl, svb, svh, svl;
  float scale;
  bool dropout;
  uint32_t seed, threshold;
  float keep_scale;
};

__device__ __forceinline__ float warp_max(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ bool dropout_keeps(const Params& p, int64_t bh, int64_t row, int64_t key) {
  const uint64_t counter = (static_cast<uint64_t>(bh) * p.L + row) * static_cast<uint64_t>(p.L) + key;
  return dropout_bits(counter, p.seed) >= p.threshold;
}

// Loads rows[r] (r < count) of a [.., L, D] slice into tile[r][0..D) as float; zero rows past count.
template <typename scalar_t>
__device__ __forceinline__ void load_tile(float (*tile)[kPad], const scalar_t* base, int64_t row_stride,
                                          const int32_t* rows, int64_t first, int64_t count, int64_t D) {
  for (int e = threadIdx.x; e < kTile * kMaxD; e += blockDim.x) {
    const int r = e / kMaxD, d = e % kMaxD;
    if (d >= D) continue;
    const int64_t pos = first + r;
    float x = 0.f;
    if (pos < count) {
      const int64_t row = rows ? static_cast<int64_t>(rows[pos]) : pos;
      x = static_cast<float>(base[row * row_stride + d]);
    }
    tile[r][d] = x;
  }
}

template <typename scalar_t>
__global__ void masked_attention_fwd_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                            const scalar_t* __restrict__ v, const int32_t* __restrict__ index,
                                            const int32_t* __restrict__ counts, scalar_t* __restrict__ out,
                                            float* __restrict__ lse, Params p) {
  __shared__ float ks[kTile][kPad];
  __shared__ float vs[kTile][kPad];
  __shared__ float qs[kWarps][kMaxD];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool row_ok = row < p.L;
  const int64_t n = counts[b];
  const int32_t* kept = index + b * p.L;
  for (int d = lane; d < kMaxD; d += kWarp)
    qs[warp][d] = (row_ok && d < p.D) ? static_cast<float>(q[b * p.sqb + h * p.sqh + row * p.sql + d]) : 0.f;
  float m = -INFINITY, l = 0.f, acc[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0.f;
  for (int64_t start = 0; start < n; start += kTile) {
    __syncthreads();
    load_tile(ks, k + b * p.skb + h * p.skh, p.skl, kept, start, n, p.D);
    load_tile(vs, v + b * p.svb + h * p.svh, p.svl, kept, start, n, p.D);
    __syncthreads();
    const bool key_ok = start + lane < n;
    float s = 0.f;
    for (int d = 0; d < p.D; ++d) s += qs[warp][d] * ks[lane][d];
    s = key_ok ? s * p.scale : -INFINITY;
    const float m_new = fmaxf(m, warp_max(s));
    const float alpha = __expf(m - m_new);
    float e = key_ok ? __expf(s - m_new) : 0.f;
    l = l * alpha + warp_sum(e);
    if (p.dropout && key_ok) e = dropout_keeps(p, bh, row, kept[start + lane]) ? e * p.keep_scale : 0.f;
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) acc[t] *= alpha;
    for (int j = 0; j < kTile; ++j) {
      const float ej = __shfl_sync(0xffffffffu, e, j);
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) acc[t] += ej * vs[j][lane + t * kWarp];
    }
    m = m_new;
  }
  if (!row_ok) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;  // a sample that keeps no key: zero output
  scalar_t* o = out + (bh * p.L + row) * p.D;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int d = lane + t * kWarp;
    if (d < p.D) o[d] = static_cast<scalar_t>(acc[t] * inv);
  }
  if (lane == 0) lse[bh * p.L + row] = l > 0.f ? m + logf(l) : -INFINITY;
}

template <typename scalar_t>
__global__ void masked_attention_bwd_dq_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                               const scalar_t* __restrict__ v, const scalar_t* __restrict__ dout,
                                               const float* __restrict__ lse, const float* __restrict__ delta,
                                               const int32_t* __restrict__ index, const int32_t* __restrict__ counts,
                                               scalar_t* __restrict__ dq, Params p) {
  __shared__ float ks[kTile][kPad];
  __shared__ float vs[kTile][kPad];
  __shared__ float qs[kWarps][kMaxD];
  __shared__ float gs[kWarps][kMaxD];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const bool row_ok = row < p.L;
  const int64_t n = counts[b];
  const int32_t* kept = index + b * p.L;
  for (int d = lane; d < kMaxD; d += kWarp) {
    const bool ok = row_ok && d < p.D;
    qs[warp][d] = ok ? static_cast<float>(q[b * p.sqb + h * p.sqh + row * p.sql + d]) : 0.f;
    gs[warp][d] = ok ? static_cast<float>(dout[(bh * p.L + row) * p.D + d]) : 0.f;
  }
  const float row_lse = row_ok ? lse[bh * p.L + row] : 0.f;
  const float row_delta = row_ok ? delta[bh * p.L + row] : 0.f;
  float acc[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0.f;
  for (int64_t start = 0; start < n; start += kTile) {
    __syncthreads();
    load_tile(ks, k + b * p.skb + h * p.skh, p.skl, kept, start, n, p.D);
    load_tile(vs, v + b * p.svb + h * p.svh, p.svl, kept, start, n, p.D);
    __syncthreads();
    const bool ok = row_ok && start + lane < n;
    float s = 0.f, dp = 0.f;
    for (int d = 0; d < p.D; ++d) {
      s += qs[warp][d] * ks[lane][d];
      dp += gs[warp][d] * vs[lane][d];
    }
    const float prob = ok ? __expf(fminf(s * p.scale - row_lse, 0.f)) : 0.f;
    if (p.dropout && ok) dp = dropout_keeps(p, bh, row, kept[start + lane]) ? dp * p.keep_scale : 0.f;
    const float ds = prob * (dp - row_delta);
    for (int j = 0; j < kTile; ++j) {
      const float dsj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) acc[t] += dsj * ks[j][lane + t * kWarp];
    }
  }
  if (!row_ok) return;
  scalar_t* o = dq + (bh * p.L + row) * p.D;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int d = lane + t * kWarp;
    if (d < p.D) o[d] = static_cast<scalar_t>(acc[t] * p.scale);
  }
}

template <typename scalar_t>
__global__ void masked_attention_bwd_dkdv_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                                 const scalar_t* __restrict__ v, const scalar_t* __restrict__ dout,
                                                 const float* __restrict__ lse, const float* __restrict__ delta,
                                                 const int32_t* __restrict__ index,
                                                 const int32_t* __restrict__ counts, scalar_t* __restrict__ dk,
                                                 scalar_t* __restrict__ dv, Params p) {
  __shared__ float qs[kTile][kPad];
  __shared__ float gs[kTile][kPad];
  __shared__ float lses[kTile], deltas[kTile];
  __shared__ float kr[kWarps][kMaxD];
  __shared__ float vr[kWarps][kMaxD];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t bh = blockIdx.y, b = bh / p.H, h = bh % p.H;
  const int64_t n = counts[b];
  const int64_t first_key = static_cast<int64_t>(blockIdx.x) * kWarps;
  if (first_key >= n) return;  // uniform over the block: no __syncthreads is skipped by part of it
  const int64_t slot = first_key + warp;
  const bool key_ok = slot < n;
  const int32_t* kept = index + b * p.L;
  const int64_t key = key_ok ? kept[slot] : 0;
  for (int d = lane; d < kMaxD; d += kWarp) {
    const bool ok = key_ok && d < p.D;
    kr[warp][d] = ok ? static_cast<float>(k[b * p.skb + h * p.skh + key * p.skl + d]) : 0.f;
    vr[warp][d] = ok ? static_cast<float>(v[b * p.svb + h * p.svh + key * p.svl + d]) : 0.f;
  }
  float dk_acc[kPerLane], dv_acc[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) dk_acc[t] = dv_acc[t] = 0.f;
  for (int64_t start = 0; start < p.L; start += kTile) {
    __syncthreads();
    load_tile(qs, q + b * p.sqb + h * p.sqh, p.sql, nullptr, start, p.L, p.D);
    load_tile(gs, dout + bh * p.L * p.D, p.D, nullptr, start, p.L, p.D);
    if (threadIdx.x < kTile) {
      const int64_t r = start + threadIdx.x;
      lses[threadIdx.x] = r < p.L ? lse[bh * p.L + r] : 0.f;
      deltas[threadIdx.x] = r < p.L ? delta[bh * p.L + r] : 0.f;
    }
    __syncthreads();
    const int64_t row = start + lane;
    const bool ok = key_ok && row < p.L;
    float s = 0.f, dp = 0.f;
    for (int d = 0; d < p.D; ++d) {
      s += qs[lane][d] * kr[warp][d];
      dp += gs[lane][d] * vr[warp][d];
    }
    const float prob = ok ? __expf(fminf(s * p.scale - lses[lane], 0.f)) : 0.f;
    float pz = prob;
    if (p.dropout && ok) {
      const bool keep = dropout_keeps(p, bh, row, key);
      pz = keep ? prob * p.keep_scale : 0.f;
      dp = keep ? dp * p.keep_scale : 0.f;
    }
    const float ds = prob * (dp - deltas[lane]);
    for (int i = 0; i < kTile; ++i) {
      const float pzi = __shfl_sync(0xffffffffu, pz, i);
      const float dsi = __shfl_sync(0xffffffffu, ds, i);
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        dv_acc[t] += pzi * gs[i][lane + t * kWarp];
        dk_acc[t] += dsi * qs[i][lane + t * kWarp];
      }
    }
  }
  if (!key_ok) return;
  const int64_t base = (bh * p.L + key) * p.D;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int d = lane + t * kWarp;
    if (d < p.D) {
      dk[base + d] = static_cast<scalar_t>(dk_acc[t] * p.scale);
      dv[base + d] = static_cast<scalar_t>(dv_acc[t]);
    }
  }
}

Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, double dropout_p,
                   int64_t seed) {
  Params p;
  p.H = q.size(1);
  p.L = q.size(2);
  p.D = q.size(3);
  auto row_stride = [](const at::Tensor& t) { return t.size(2) > 1 ? t.stride(2) : t.size(3); };
  p.sqb = q.stride(0), p.sqh = q.stride(1), p.sql = row_stride(q);
  p.skb = k.stride(0), p.skh = k.stride(1), p.skl = row_stride(k);
  p.svb = v.stride(0), p.svh = v.stride(1), p.svl = row_stride(v);
  p.scale = static_cast<float>(scale);
  p.dropout = dropout_p > 0.0;
  p.seed = static_cast<uint32_t>(static_cast<uint64_t>(seed) & 0xffffffffULL);
  p.threshold = dropout_threshold(dropout_p);
  p.keep_scale = p.dropout ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 1.f;
  return p;
}

}  // namespace

void launch_masked_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& index, const at::Tensor& counts, at::Tensor& out, at::Tensor& lse,
                                 double scale, double dropout_p, int64_t seed) {
  const c10::cuda::CUDAGuard guard(q.device());
  const Params p = make_params(q, k, v, scale, dropout_p, seed);
  const dim3 grid(static_cast<unsigned>((p.L + kWarps - 1) / kWarps), static_cast<unsigned>(q.size(0) * p.H));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_fwd_cuda", [&] {
    masked_attention_fwd_kernel<scalar_t><<<grid, kWarps * kWarp, 0, stream>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), index.data_ptr<int32_t>(),
        counts.data_ptr<int32_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<float>(), p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_masked_attention_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& index, const at::Tensor& counts,
                                 const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dq, at::Tensor& dk,
                                 at::Tensor& dv, double scale, double dropout_p, int64_t seed) {
  const c10::cuda::CUDAGuard guard(q.device());
  const Params p = make_params(q, k, v, scale, dropout_p, seed);
  const unsigned blocks_l = static_cast<unsigned>((p.L + kWarps - 1) / kWarps);
  const dim3 grid(blocks_l, static_cast<unsigned>(q.size(0) * p.H));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_bwd_cuda", [&] {
    masked_attention_bwd_dq_kernel<scalar_t><<<grid, kWarps * kWarp, 0, stream>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
        lse.data_ptr<float>(), delta.data_ptr<float>(), index.data_ptr<int32_t>(), counts.data_ptr<int32_t>(),
        dq.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    masked_attention_bwd_dkdv_kernel<scalar_t><<<grid, kWarps * kWarp, 0, stream>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
        lse.data_ptr<float>(), delta.data_ptr<float>(), index.data_ptr<int32_t>(), counts.data_ptr<int32_t>(),
        dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace scob_fast::masked_attention
