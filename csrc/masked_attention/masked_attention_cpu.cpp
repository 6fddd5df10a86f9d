// CPU body of masked attention: pays only for the keys each sample keeps.
//
// Design (measured against alternatives in bench/masked_attention.py):
//  * compaction: per sample b, the kept key positions idx_b[0..n_b) are listed once; per (b, h) the
//    kept K and V rows are gathered into dense n_b x D panels (skipped when every key is kept);
//  * forward, per (b, h, block of BQ queries): S = scale * Q_blk Kc^T (BLAS), row softmax over the n_b
//    kept keys, O_blk = P Vc (BLAS), rows divided by their sums; saves lse = max + log(sum);
//  * backward, per (b, h): per query block, recompute P = exp(S - lse), then dVc += P^T dO,
//    dP = dO Vc^T, dS = P (dP - rowsum(dO * O)), dQ = scale dS Kc, dKc += scale dS^T Q; scatter dKc and
//    dVc back to the kept rows (masked rows get zero gradient).
// Extra memory is O(L * D) per (b, h) plus a BQ x n_b score block per thread (never L x L), taken with
// at::empty so the profiler sees it. Work is spread over threads with a shared task counter (samples
// keep different numbers of keys, so static chunks would be unbalanced). float32 and bfloat16 inputs
// compute in float32; float64 computes in float64 (used for gradcheck).
#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "masked_attention/masked_attention.h"

namespace scob_fast::masked_attention {
namespace {

// Query rows per block, from the number of kept keys n: as tall as possible (BLAS is markedly faster
// on 256-512-row panels than on 128-row ones when n is a few hundred) while the score blocks stay in
// a 1 MiB L2 (the backward holds two BQ x n blocks). Measured on a 2-core Zen 4 at H=8, L=784, D=64.
constexpr int64_t kForwardScoreBudget = 128 * 1024;  // floats in the one forward score block
constexpr int64_t kBackwardScoreBudget = 96 * 1024;  // floats in each of the two backward blocks

int64_t query_block(int64_t budget, int64_t n, int64_t L) {
  const int64_t rows = std::clamp<int64_t>((budget / std::max<int64_t>(n, 1)) / 32 * 32, 64, 512);
  return std::min(rows, L);
}

// ---------------------------------------------------------------------------------------------
// GEMM. torch's own BLAS (MKL in the x86 wheels) exports the Fortran sgemm_/dgemm_; calling them
// directly costs nothing per call, whereas at::mm on from_blob views costs microseconds per call and
// the backward makes thousands of small calls. Looked up at run time so that a torch build without
// these symbols still loads this extension and falls back to at::mm.
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                          const float*, const int*, const float*, const int*, const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                          const double*, const int*, const double*, const int*, const double*, double*,
                          const int*);

struct Blas {
  sgemm_fn sgemm = nullptr;
  dgemm_fn dgemm = nullptr;
};

void* find_symbol(const char* name) {
  if (void* sym = dlsym(RTLD_DEFAULT, name)) return sym;
  // torch's libraries are loaded RTLD_LOCAL by Python: look inside the already loaded libtorch_cpu.
  if (void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD)) {
    void* sym = dlsym(lib, name);
    dlclose(lib);
    return sym;
  }
  return nullptr;
}

const Blas& blas() {
  static const Blas found = [] {
    Blas b;
    b.sgemm = reinterpret_cast<sgemm_fn>(find_symbol("sgemm_"));
    b.dgemm = reinterpret_cast<dgemm_fn>(find_symbol("dgemm_"));
    return b;
  }();
  return found;
}

template <typename T>
void gemm_aten(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor a = ta ? at::from_blob(const_cast<T*>(A), {K, M}, {lda, 1}, opt).t()
                    : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opt);
  at::Tensor b = tb ? at::from_blob(const_cast<T*>(B), {N, K}, {ldb, 1}, opt).t()
                    : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opt);
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opt);
  if (beta == T(0)) {
    at::mm_out(c, a, b);
    if (alpha != T(1)) c.mul_(alpha);
  } else {
    at::addmm_out(c, c, a, b, beta, alpha);
  }
}

// Row-major C[M x N] = alpha * op(A)[M x K] op(B)[K x N] + beta * C; op(A) = A^T when ta (A is then
// stored K x M). Column-major BLAS sees row-major C as C^T, so it is asked for C^T = op(B)^T op(A)^T.
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const char ca = tb ? 'T' : 'N', cb = ta ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(std::max<int64_t>(ldb, 1)), lb = static_cast<int>(std::max<int64_t>(lda, 1));
  const int lc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    if (blas().sgemm) return blas().sgemm(&ca, &cb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
  } else {
    if (blas().dgemm) return blas().dgemm(&ca, &cb, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
  }
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  gemm_aten<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// ---------------------------------------------------------------------------------------------
// Row kernels. Compiled once per x86 level (AVX-512, AVX2+FMA, baseline) and picked at load time,
// since the extension itself is built for baseline x86-64 and must run on any machine. `flatten`
// inlines the helpers into each clone (a call in the loop body blocks vectorisation).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SCOB_FAST_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define SCOB_FAST_VECTOR_CLONES
#endif

// exp(x) for x <= 0 to ~2 ulp, written so the compiler vectorises it: exp(x) = 2^n exp(r), n the
// nearest integer to x / ln2, r = x - n ln2 (two-constant Cody-Waite), exp(r) by its degree-6 Taylor
// polynomial (|r| <= ln2 / 2 bounds the truncation at 1.2e-7 relative). The exponent is clamped in
// integers to [-126, 127]: inputs below about -87 give ~1e-38 (never slow denormals; such weights
// vanish next to the row maximum's 1). No floating-point clamp on purpose: under GCC's default
// -ftrapping-math a float min/max becomes a branch and the AVX2 / SSE clones stop vectorising.
inline float exp_nonpositive(float x) {
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round-to-nearest via 1.5 * 2^23
  float r = x - n * 0.693145752f;
  r = r - n * 1.42860677e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t e = static_cast<int32_t>(n);
  e = e < -126 ? -126 : (e > 127 ? 127 : e);
  const int32_t bits = (e + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// Row maximum through integer keys that order like the floats (sign-magnitude -> two's complement):
// GCC does not vectorise a float max reduction without -ffinite-math-only, but does an int one.
inline int32_t float_order_key(float x) {
  int32_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b ^ ((b >> 31) & 0x7fffffff);
}

inline float row_max(const float* s, int64_t n) {
  int32_t key = std::numeric_limits<int32_t>::min();
#pragma omp simd reduction(max : key)
  for (int64_t j = 0; j < n; ++j) {
    const int32_t k = float_order_key(s[j]);
    key = k > key ? k : key;
  }
  const int32_t b = key ^ ((key >> 31) & 0x7fffffff);
  float m;
  std::memcpy(&m, &b, sizeof(m));
  return m;
}

inline double row_max(const double* s, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

struct Dropout {
  bool on = false;
  uint32_t threshold = 0;
  uint32_t seed = 0;
  double keep_scale = 1.0;  // 1 / (1 - p)
};

// Softmax of each of `rows` rows of S (length n, leading dimension ld), in place, unnormalised:
// S <- exp(S - rowmax), then (dropout) S <- S * mask / (1 - p). Writes lse = max + log(sum) and
// inv_sum = 1 / sum (the output rows are divided after the P V product, which is cheaper when n > D).
template <typename acc_t>
inline void softmax_rows_impl(acc_t* S, int64_t rows, int64_t n, int64_t ld, acc_t* lse, acc_t* inv_sum,
                              const Dropout& drop, uint64_t counter0, int64_t L, const int32_t* key_index) {
  for (int64_t i = 0; i < rows; ++i) {
    acc_t* s = S + i * ld;
    const acc_t m = row_max(s, n);
    acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const acc_t e = exp_nonpositive(s[j] - m);
      s[j] = e;
      sum += e;
    }
    lse[i] = m + std::log(sum);
    inv_sum[i] = acc_t(1) / sum;
    if (drop.on) {
      const uint64_t row_counter = counter0 + static_cast<uint64_t>(i) * static_cast<uint64_t>(L);
      const acc_t z = static_cast<acc_t>(drop.keep_scale);
      for (int64_t j = 0; j < n; ++j) {
        const bool keep = dropout_bits(row_counter + static_cast<uint64_t>(key_index[j]), drop.seed) >= drop.threshold;
        s[j] = keep ? s[j] * z : acc_t(0);
      }
    }
  }
}

// P = exp(S - lse_row) in place (the backward's recomputed, undropped probabilities).
template <typename acc_t>
inline void probs_from_lse_impl(acc_t* S, int64_t rows, int64_t n, int64_t ld, const acc_t* lse) {
  for (int64_t i = 0; i < rows; ++i) {
    acc_t* s = S + i * ld;
    const acc_t l = lse[i];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] = exp_nonpositive(s[j] - l);
  }
}

// Dropout only: PZ = P * mask / (1 - p), the weights that actually multiplied V.
template <typename acc_t>
inline void apply_dropout_impl(const acc_t* P, acc_t* PZ, int64_t rows, int64_t n, int64_t ld,
                               const Dropout& drop, uint64_t counter0, int64_t L, const int32_t* key_index) {
  const acc_t z = static_cast<acc_t>(drop.keep_scale);
  for (int64_t i = 0; i < rows; ++i) {
    const uint64_t row_counter = counter0 + static_cast<uint64_t>(i) * static_cast<uint64_t>(L);
    for (int64_t j = 0; j < n; ++j) {
      const bool keep = dropout_bits(row_counter + static_cast<uint64_t>(key_index[j]), drop.seed) >= drop.threshold;
      PZ[i * ld + j] = keep ? P[i * ld + j] * z : acc_t(0);
    }
  }
}

// dS = P * (dP * mask / (1 - p) - delta_row), written over dP. Softmax backward: delta_i =
// sum_j P_ij dP_ij = rowsum(dO_i * O_i), which stays true with dropout (O already holds the mask).
template <typename acc_t>
inline void grad_scores_impl(const acc_t* P, acc_t* dP, int64_t rows, int64_t n, int64_t ld, const acc_t* delta,
                             const Dropout& drop, uint64_t counter0, int64_t L, const int32_t* key_index) {
  for (int64_t i = 0; i < rows; ++i) {
    const acc_t* p = P + i * ld;
    acc_t* dp = dP + i * ld;
    const acc_t d = delta[i];
    if (!drop.on) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - d);
    } else {
      const uint64_t row_counter = counter0 + static_cast<uint64_t>(i) * static_cast<uint64_t>(L);
      const acc_t z = static_cast<acc_t>(drop.keep_scale);
      for (int64_t j = 0; j < n; ++j) {
        const bool keep = dropout_bits(row_counter + static_cast<uint64_t>(key_index[j]), drop.seed) >= drop.threshold;
        dp[j] = p[j] * ((keep ? dp[j] * z : acc_t(0)) - d);
      }
    }
  }
}

SCOB_FAST_VECTOR_CLONES void softmax_rows(float* S, int64_t rows, int64_t n, int64_t ld, float* lse, float* inv_sum,
                                          const Dropout& drop, uint64_t counter0, int64_t L, const int32_t* key_index) {
  softmax_rows_impl<float>(S, rows, n, ld, lse, inv_sum, drop, counter0, L, key_index);
}
void softmax_rows(double* S, int64_t rows, int64_t n, int64_t ld, double* lse, double* inv_sum, const Dropout& drop,
                  uint64_t counter0, int64_t L, const int32_t* key_index) {
  softmax_rows_impl<double>(S, rows, n, ld, lse, inv_sum, drop, counter0, L, key_index);
}
SCOB_FAST_VECTOR_CLONES void probs_from_lse(float* S, int64_t rows, int64_t n, int64_t ld, const float* lse) {
  probs_from_lse_impl<float>(S, rows, n, ld, lse);
}
void probs_from_lse(double* S, int64_t rows, int64_t n, int64_t ld, const double* lse) {
  probs_from_lse_impl<double>(S, rows, n, ld, lse);
}
SCOB_FAST_VECTOR_CLONES void apply_dropout(const float* P, float* PZ, int64_t rows, int64_t n, int64_t ld,
                                           const Dropout& drop, uint64_t counter0, int64_t L, const int32_t* key_index) {
  apply_dropout_impl<float>(P, PZ, rows, n, ld, drop, counter0, L, key_index);
}
void apply_dropout(const double* P, double* PZ, int64_t rows, int64_t n, int64_t ld, const Dropout& drop,
                   uint64_t counter0, int64_t L, const int32_t* key_index) {
  apply_dropout_impl<double>(P, PZ, rows, n, ld, drop, counter0, L, key_index);
}
SCOB_FAST_VECTOR_CLONES void grad_scores(const float* P, float* dP, int64_t rows, int64_t n, int64_t ld,
                                         const float* delta, const Dropout& drop, uint64_t counter0, int64_t L,
                                         const int32_t* key_index) {
  grad_scores_impl<float>(P, dP, rows, n, ld, delta, drop, counter0, L, key_index);
}
void grad_scores(const double* P, double* dP, int64_t rows, int64_t n, int64_t ld, const double* delta,
                 const Dropout& drop, uint64_t counter0, int64_t L, const int32_t* key_index) {
  grad_scores_impl<double>(P, dP, rows, n, ld, delta, drop, counter0, L, key_index);
}

// ---------------------------------------------------------------------------------------------
// Shared plumbing.

template <typename T>
at::ScalarType scalar_type_of() {
  return c10::CppTypeToScalarType<T>::value;
}

// Rows [row0, row0 + rows) of a [.., L, D] slice as acc_t with unit row stride D; a pointer into the
// input itself when no conversion is needed.
template <typename scalar_t, typename acc_t>
const acc_t* rows_as_acc(const scalar_t* base, int64_t row_stride, int64_t rows, int64_t D, acc_t* scratch,
                         int64_t* ld) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    *ld = row_stride;
    return base;
  } else {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t d = 0; d < D; ++d) scratch[i * D + d] = static_cast<acc_t>(base[i * row_stride + d]);
    *ld = D;
    return scratch;
  }
}

// Runs body(task, thread_state) for every task in [0, n_tasks) on torch's intra-op threads, handing
// tasks out one at a time from a shared counter so uneven tasks balance. make_state() runs once per
// thread (scratch buffers).
template <typename MakeState, typename Body>
void run_tasks(int64_t n_tasks, MakeState make_state, Body body) {
  if (n_tasks <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), n_tasks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t t = next.fetch_add(1); t < n_tasks; t = next.fetch_add(1)) body(t, state);
  });
}

struct Compaction {
  at::Tensor index;  // int32 [B, L]: sample b's kept key positions first, ascending
  std::vector<int64_t> count;
  int64_t max_count = 0;
};

Compaction compact_keys(const at::Tensor& key_keep, int64_t B, int64_t L) {
  Compaction c;
  const at::Tensor keep = key_keep.contiguous();
  c.index = at::empty({B, L}, at::kInt);
  c.count.assign(B, 0);
  const bool* kp = keep.data_ptr<bool>();
  int32_t* ip = c.index.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    for (int64_t j = 0; j < L; ++j)
      if (kp[b * L + j]) ip[b * L + n++] = static_cast<int32_t>(j);
    c.count[b] = n;
    c.max_count = std::max(c.max_count, n);
  }
  return c;
}

struct Strides {
  int64_t b, h, l;
};
Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.size(2) > 1 ? t.stride(2) : t.size(3)}; }

// The kept rows of one (b, h) slice of K or V as a dense acc_t panel (n x D, leading dimension *ld), or
// the slice itself when all keys are kept and no conversion is needed.
template <typename scalar_t, typename acc_t>
const acc_t* gather_kept(const scalar_t* base, int64_t row_stride, const int32_t* index, int64_t n, int64_t L,
                         int64_t D, acc_t* panel, int64_t* ld) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (n == L) {
      *ld = row_stride;
      return base;
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* src = base + static_cast<int64_t>(index[r]) * row_stride;
    acc_t* dst = panel + r * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<acc_t>(src[d]);
  }
  *ld = D;
  return panel;
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename scalar_t, typename acc_t>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Compaction& comp,
                  const Sizes& s, acc_t scale, const Dropout& drop, at::Tensor& out, at::Tensor& lse) {
  const int64_t B = s.B, H = s.H, L = s.L, D = s.D, BH = B * H;
  const Strides qs = strides_of(q), ks = strides_of(k), vs = strides_of(v);
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  acc_t* lp = lse.data_ptr<acc_t>();
  const int32_t* index = comp.index.data_ptr<int32_t>();
  const auto acc_opt = at::TensorOptions().dtype(scalar_type_of<acc_t>());

  // Phase 1: per (b, h), the kept K and V rows as dense panels (shared by all query blocks).
  // No panel memory at all when every sample keeps every key of K and V already in acc_t (keep 1.0
  // in float32): gather_kept then reads them in place, and the call's peak stays that of its output.
  const int64_t nmax = comp.max_count;
  bool gathers = !std::is_same_v<scalar_t, acc_t>;
  for (int64_t b = 0; b < B && !gathers; ++b) gathers = comp.count[b] < L;
  at::Tensor panels = at::empty({gathers ? BH : 0, 2, nmax, D}, acc_opt);
  std::vector<const acc_t*> kc(BH), vc(BH);
  std::vector<int64_t> kld(BH), vld(BH);
  acc_t* panel_p = gathers ? panels.data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, n = comp.count[b];
      acc_t* kpanel = gathers ? panel_p + (bh * 2) * nmax * D : nullptr;
      kc[bh] = gather_kept<scalar_t, acc_t>(kp + b * ks.b + h * ks.h, ks.l, index + b * L, n, L, D, kpanel, &kld[bh]);
      vc[bh] = gather_kept<scalar_t, acc_t>(vp + b * vs.b + h * vs.h, vs.l, index + b * L, n, L, D,
                                            gathers ? kpanel + nmax * D : nullptr, &vld[bh]);
    }
  });

  // Phase 2: per (b, h, query block).
  const int64_t BQ = query_block(kForwardScoreBudget, comp.max_count, L);
  const int64_t blocks = (L + BQ - 1) / BQ;
  constexpr bool direct_out = std::is_same_v<scalar_t, acc_t>;
  run_tasks(
      BH * blocks,
      [&] {
        // scores BQ x nmax | Q block | O block | inverse row sums
        return at::empty({BQ * std::max<int64_t>(nmax, 1) + 2 * BQ * D + BQ}, acc_opt);
      },
      [&](int64_t task, at::Tensor& scratch) {
        const int64_t bh = task / blocks, blk = task % blocks;
        const int64_t b = bh / H, h = bh % H, n = comp.count[b];
        const int64_t i0 = blk * BQ, rows = std::min(BQ, L - i0);
        scalar_t* o_rows = op + (bh * L + i0) * D;
        acc_t* lse_rows = lp + bh * L + i0;
        if (n == 0) {  // nothing to attend to: zero output by definition
          std::fill(o_rows, o_rows + rows * D, scalar_t(0));
          std::fill(lse_rows, lse_rows + rows, -std::numeric_limits<acc_t>::infinity());
          return;
        }
        acc_t* S = scratch.data_ptr<acc_t>();
        acc_t* qbuf = S + BQ * std::max<int64_t>(nmax, 1);
        acc_t* obuf = qbuf + BQ * D;
        acc_t* inv_sum = obuf + BQ * D;
        int64_t qld;
        const acc_t* Q = rows_as_acc<scalar_t, acc_t>(qp + b * qs.b + h * qs.h + i0 * qs.l, qs.l, rows, D, qbuf, &qld);
        gemm<acc_t>(false, true, rows, n, D, scale, Q, qld, kc[bh], kld[bh], acc_t(0), S, n);
        const uint64_t counter0 = (static_cast<uint64_t>(bh) * L + i0) * static_cast<uint64_t>(L);
        softmax_rows(S, rows, n, n, lse_rows, inv_sum, drop, counter0, L, index + b * L);
        acc_t* O = direct_out ? reinterpret_cast<acc_t*>(o_rows) : obuf;
        gemm<acc_t>(false, false, rows, D, n, acc_t(1), S, n, vc[bh], vld[bh], acc_t(0), O, D);
        for (int64_t i = 0; i < rows; ++i) {
          const acc_t r = inv_sum[i];
          scalar_t* dst = o_rows + i * D;
          const acc_t* src = O + i * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(src[d] * r);
        }
      });
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename scalar_t, typename acc_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, const Compaction& comp, const Sizes& s, acc_t scale,
                   const Dropout& drop, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t B = s.B, H = s.H, L = s.L, D = s.D, BH = B * H;
  const Strides qs = strides_of(q), ks = strides_of(k), vs = strides_of(v), gs = strides_of(grad_out),
                os = strides_of(out);
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  const scalar_t* gp = grad_out.data_ptr<scalar_t>();
  const scalar_t* outp = out.data_ptr<scalar_t>();
  const acc_t* lp = lse.data_ptr<acc_t>();
  scalar_t* dqp = dq.data_ptr<scalar_t>();
  scalar_t* dkp = dk.data_ptr<scalar_t>();
  scalar_t* dvp = dv.data_ptr<scalar_t>();
  const int32_t* index = comp.index.data_ptr<int32_t>();
  const auto acc_opt = at::TensorOptions().dtype(scalar_type_of<acc_t>());
  const int64_t nmax = std::max<int64_t>(comp.max_count, 1);
  const int64_t BQ = query_block(kBackwardScoreBudget, comp.max_count, L);
  constexpr bool same_type = std::is_same_v<scalar_t, acc_t>;

  run_tasks(
      BH,
      [&] {
        // P block | dP block | K, V, dK, dV panels | Q, dO, dQ blocks | delta
        return at::empty({2 * BQ * nmax + 4 * nmax * D + 3 * BQ * D + BQ}, acc_opt);
      },
      [&](int64_t bh, at::Tensor& scratch) {
        const int64_t b = bh / H, h = bh % H, n = comp.count[b];
        scalar_t* dq_bh = dqp + bh * L * D;
        scalar_t* dk_bh = dkp + bh * L * D;
        scalar_t* dv_bh = dvp + bh * L * D;
        if (n == 0) {
          std::fill(dq_bh, dq_bh + L * D, scalar_t(0));
          std::fill(dk_bh, dk_bh + L * D, scalar_t(0));
          std::fill(dv_bh, dv_bh + L * D, scalar_t(0));
          return;
        }
        acc_t* P = scratch.data_ptr<acc_t>();
        acc_t* dP = P + BQ * nmax;
        acc_t* kpanel = dP + BQ * nmax;
        acc_t* vpanel = kpanel + nmax * D;
        acc_t* dkpanel = vpanel + nmax * D;
        acc_t* dvpanel = dkpanel + nmax * D;
        acc_t* qbuf = dvpanel + nmax * D;
        acc_t* gbuf = qbuf + BQ * D;
        acc_t* dqbuf = gbuf + BQ * D;
        acc_t* delta = dqbuf + BQ * D;
        const int32_t* kept = index + b * L;

        int64_t kld, vld;
        const acc_t* Kc = gather_kept<scalar_t, acc_t>(kp + b * ks.b + h * ks.h, ks.l, kept, n, L, D, kpanel, &kld);
        const acc_t* Vc = gather_kept<scalar_t, acc_t>(vp + b * vs.b + h * vs.h, vs.l, kept, n, L, D, vpanel, &vld);
        // With every key kept the key gradients can accumulate straight into dk / dv.
        const bool direct_kv = same_type && n == L;
        acc_t* dKc = direct_kv ? reinterpret_cast<acc_t*>(dk_bh) : dkpanel;
        acc_t* dVc = direct_kv ? reinterpret_cast<acc_t*>(dv_bh) : dvpanel;
        std::fill(dKc, dKc + n * D, acc_t(0));
        std::fill(dVc, dVc + n * D, acc_t(0));

        for (int64_t i0 = 0; i0 < L; i0 += BQ) {
          const int64_t rows = std::min(BQ, L - i0);
          int64_t qld, gld;
          const acc_t* Q = rows_as_acc<scalar_t, acc_t>(qp + b * qs.b + h * qs.h + i0 * qs.l, qs.l, rows, D, qbuf, &qld);
          const acc_t* G = rows_as_acc<scalar_t, acc_t>(gp + b * gs.b + h * gs.h + i0 * gs.l, gs.l, rows, D, gbuf, &gld);
          const scalar_t* O = outp + b * os.b + h * os.h + i0 * os.l;
          for (int64_t i = 0; i < rows; ++i) {
            acc_t acc = 0;
            const scalar_t* o = O + i * os.l;
            const acc_t* g = G + i * gld;
#pragma omp simd reduction(+ : acc)
            for (int64_t d = 0; d < D; ++d) acc += g[d] * static_cast<acc_t>(o[d]);
            delta[i] = acc;
          }
          const uint64_t counter0 = (static_cast<uint64_t>(bh) * L + i0) * static_cast<uint64_t>(L);

          gemm<acc_t>(false, true, rows, n, D, scale, Q, qld, Kc, kld, acc_t(0), P, n);
          probs_from_lse(P, rows, n, n, lp + bh * L + i0);
          if (drop.on) {
            apply_dropout(P, dP, rows, n, n, drop, counter0, L, kept);
            gemm<acc_t>(true, false, n, D, rows, acc_t(1), dP, n, G, gld, acc_t(1), dVc, D);
          } else {
            gemm<acc_t>(true, false, n, D, rows, acc_t(1), P, n, G, gld, acc_t(1), dVc, D);
          }
          gemm<acc_t>(false, true, rows, n, D, acc_t(1), G, gld, Vc, vld, acc_t(0), dP, n);
          grad_scores(P, dP, rows, n, n, delta, drop, counter0, L, kept);
          acc_t* dQ = same_type ? reinterpret_cast<acc_t*>(dq_bh + i0 * D) : dqbuf;
          gemm<acc_t>(false, false, rows, D, n, scale, dP, n, Kc, kld, acc_t(0), dQ, D);
          if constexpr (!same_type) {
            for (int64_t e = 0; e < rows * D; ++e) dq_bh[i0 * D + e] = static_cast<scalar_t>(dQ[e]);
          }
          gemm<acc_t>(true, false, n, D, rows, scale, dP, n, Q, qld, acc_t(1), dKc, D);
        }

        if (!direct_kv) {
          std::fill(dk_bh, dk_bh + L * D, scalar_t(0));
          std::fill(dv_bh, dv_bh + L * D, scalar_t(0));
          for (int64_t r = 0; r < n; ++r) {
            const int64_t row = kept[r];
            for (int64_t d = 0; d < D; ++d) {
              dk_bh[row * D + d] = static_cast<scalar_t>(dKc[r * D + d]);
              dv_bh[row * D + d] = static_cast<scalar_t>(dVc[r * D + d]);
            }
          }
        }
      });
}

Dropout make_dropout(double p, int64_t seed) {
  Dropout d;
  d.on = p > 0.0;
  if (d.on) {
    d.threshold = dropout_threshold(p);
    d.seed = static_cast<uint32_t>(static_cast<uint64_t>(seed) & 0xffffffffULL);
    d.keep_scale = 1.0 / (1.0 - p);
  }
  return d;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> masked_attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& v, const at::Tensor& key_keep,
                                                             double scale, double dropout_p, int64_t seed) {
  const Sizes s = check_forward_inputs(q, k, v, key_keep, dropout_p, c10::kCPU);
  const auto acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({s.B, s.H, s.L, s.D}, q.options());
  at::Tensor lse = at::empty({s.B, s.H, s.L}, q.options().dtype(acc_type));
  if (out.numel() == 0) {
    lse.zero_();
    return {out, lse};
  }
  const Compaction comp = compact_keys(key_keep, s.B, s.L);
  const Dropout drop = make_dropout(dropout_p, seed);
  switch (q.scalar_type()) {
    case at::kFloat:
      forward_impl<float, float>(q, k, v, comp, s, static_cast<float>(scale), drop, out, lse);
      break;
    case at::kBFloat16:
      forward_impl<at::BFloat16, float>(q, k, v, comp, s, static_cast<float>(scale), drop, out, lse);
      break;
    case at::kDouble:
      forward_impl<double, double>(q, k, v, comp, s, scale, drop, out, lse);
      break;
    default:
      SCOB_FAST_CHECK_ARG(false, "q", "dtype ", q.scalar_type(), " is not supported on CPU");
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_keep, const at::Tensor& out, const at::Tensor& lse, double scale, double dropout_p,
    int64_t seed) {
  const Sizes s = check_backward_inputs(grad_out, q, k, v, key_keep, out, lse, dropout_p, c10::kCPU);
  at::Tensor dq = at::empty({s.B, s.H, s.L, s.D}, q.options());
  at::Tensor dk = at::empty({s.B, s.H, s.L, s.D}, q.options());
  at::Tensor dv = at::empty({s.B, s.H, s.L, s.D}, q.options());
  if (dq.numel() == 0) return {dq, dk, dv};
  const Compaction comp = compact_keys(key_keep, s.B, s.L);
  const Dropout drop = make_dropout(dropout_p, seed);
  switch (q.scalar_type()) {
    case at::kFloat:
      backward_impl<float, float>(grad_out, q, k, v, out, lse, comp, s, static_cast<float>(scale), drop, dq, dk, dv);
      break;
    case at::kBFloat16:
      backward_impl<at::BFloat16, float>(grad_out, q, k, v, out, lse, comp, s, static_cast<float>(scale), drop, dq,
                                         dk, dv);
      break;
    case at::kDouble:
      backward_impl<double, double>(grad_out, q, k, v, out, lse, comp, s, scale, drop, dq, dk, dv);
      break;
    default:
      SCOB_FAST_CHECK_ARG(false, "q", "dtype ", q.scalar_type(), " is not supported on CPU");
  }
  return {dq, dk, dv};
}

}  // namespace scob_fast::masked_attention
