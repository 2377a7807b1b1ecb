// CUDA kernels of xai-engine with C launch functions (contracts in ops_cuda.h). Deliberately free of torch headers:
// plain nvcc compiles this file in seconds (cpp_ext/build_cuda_check.sh), and binding.cpp adds the torch side.
#include "ops_cuda.h"

#include <cub/device/device_radix_sort.cuh>

#include <climits>

namespace {

constexpr int kThreads = 256;
constexpr long long kMaxBlocks = 65535LL * 16;

unsigned int blocks_for(long long n) {
  const long long b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

int launched() { return static_cast<int>(cudaGetLastError()); }

// out[b, n, a, t, d] = x[b, a, t, d] * m[n, t]; tokens: A = 1; feature maps: A = C, T = P, D = 1.
__global__ void mask_rows_kernel(const float* __restrict__ x, const float* __restrict__ m, float* __restrict__ out,
                                 long long B, long long A, long long T, long long D, long long N) {
  const long long total = B * N * A * T * D;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    const long long d = i % D;
    long long r = i / D;
    const long long t = r % T;
    r /= T;
    const long long a = r % A;
    r /= A;
    const long long n = r % N;
    const long long b = r / N;
    out[i] = __fmul_rn(x[((b * A + a) * T + t) * D + d], m[n * T + t]);
  }
}

// Ascending order of this key = value descending, NaN first, -0.0 == +0.0 (same as cpp_ext/ops.cpp).
__device__ __forceinline__ unsigned int descending_key(float v) {
  if (isnan(v)) return 0u;
  if (v == 0.0f) v = 0.0f;
  const unsigned int u = __float_as_uint(v);
  const unsigned int ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;
}

__global__ void rank_keys_kernel(const float* __restrict__ s, unsigned long long* __restrict__ keys,
                                 int* __restrict__ idx, long long n, long long hw) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    const unsigned long long b = static_cast<unsigned long long>(i / hw);
    keys[i] = (b << 32) | descending_key(s[i]);  // image index above the key: one sort ranks all maps apart
    idx[i] = static_cast<int>(i % hw);
  }
}

__global__ void rank_scatter_kernel(const int* __restrict__ sorted_idx, int64_t* __restrict__ rank, long long n,
                                    long long hw) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    const long long b = i / hw;
    rank[b * hw + sorted_idx[i]] = i - b * hw;
  }
}

__global__ void perturb_kernel(const float* __restrict__ images, const int64_t* __restrict__ rank,
                               const float* __restrict__ baselines, const int64_t* __restrict__ counts,
                               float* __restrict__ out, long long B, long long C, long long HW, long long S,
                               bool insertion) {
  const long long total = B * S * C * HW;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(blockDim.x) * gridDim.x) {
    const long long p = i % HW;
    long long r = i / HW;
    const long long c = r % C;
    r /= C;
    const long long s = r % S;
    const long long b = r / S;
    long long k = counts[s];
    k = k < 0 ? 0 : (k > HW ? HW : k);
    const long long src = (b * C + c) * HW + p;
    const bool inside = rank[b * HW + p] < k;
    out[i] = (inside == insertion) ? images[src] : baselines[src];
  }
}

__global__ void auc_kernel(const float* __restrict__ scores, const double* __restrict__ x, float* __restrict__ out,
                           int N, int S, int rule) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float* y = scores + static_cast<long long>(n) * S;
  double acc = 0.0;
  if (rule == 0) {
    const double last = static_cast<double>(S - 1);
    for (int i = 0; i + 1 < S; ++i) {
      // default x_i = i / (S - 1), computed as the CPU kernel does
      const double dx = x != nullptr ? x[i + 1] - x[i] : static_cast<double>(i + 1) / last - static_cast<double>(i) / last;
      acc += dx * (static_cast<double>(y[i]) + static_cast<double>(y[i + 1]));
    }
    const double span = x != nullptr ? x[S - 1] - x[0] : 1.0;
    out[n] = static_cast<float>(acc / 2.0 / span);
  } else {
    for (int i = 0; i < S; ++i) acc += static_cast<double>(y[i]);
    acc -= (static_cast<double>(y[0]) + static_cast<double>(y[S - 1])) / 2.0;
    out[n] = static_cast<float>(acc / static_cast<double>(S - 1));
  }
}

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

int bits_for(int b) {
  int bits = 0;
  while ((1LL << bits) < b) ++bits;
  return bits;
}

}  // namespace

extern "C" int xai_mask_tokens_cuda(const float* tokens, const float* masks, float* out, int B, int T, int D, int N,
                                    cudaStream_t stream) {
  if (B < 0 || T < 0 || D < 0 || N < 0) return static_cast<int>(cudaErrorInvalidValue);
  const long long total = static_cast<long long>(B) * N * T * D;
  if (total == 0) return 0;
  mask_rows_kernel<<<blocks_for(total), kThreads, 0, stream>>>(tokens, masks, out, B, 1, T, D, N);
  return launched();
}

extern "C" int xai_mask_feature_map_cuda(const float* features, const float* masks, float* out, int B, int C, int P,
                                         int N, cudaStream_t stream) {
  if (B < 0 || C < 0 || P < 0 || N < 0) return static_cast<int>(cudaErrorInvalidValue);
  const long long total = static_cast<long long>(B) * N * C * P;
  if (total == 0) return 0;
  mask_rows_kernel<<<blocks_for(total), kThreads, 0, stream>>>(features, masks, out, B, C, P, 1, N);
  return launched();
}

extern "C" int xai_saliency_rank_cuda_workspace(int B, int HW, size_t* bytes) {
  if (B < 0 || HW < 0 || bytes == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const long long n = static_cast<long long>(B) * HW;
  if (n > INT_MAX) return static_cast<int>(cudaErrorInvalidValue);
  size_t temp = 0;
  const cudaError_t err = cub::DeviceRadixSort::SortPairs(
      nullptr, temp, static_cast<const unsigned long long*>(nullptr), static_cast<unsigned long long*>(nullptr),
      static_cast<const int*>(nullptr), static_cast<int*>(nullptr), static_cast<int>(n), 0, 32 + bits_for(B));
  if (err != cudaSuccess) return static_cast<int>(err);
  *bytes = 2 * align256(n * sizeof(unsigned long long)) + 2 * align256(n * sizeof(int)) + align256(temp);
  return 0;
}

extern "C" int xai_saliency_rank_cuda(const float* saliency, int64_t* rank, void* workspace, size_t workspace_bytes,
                                      int B, int HW, cudaStream_t stream) {
  size_t needed = 0;
  const int status = xai_saliency_rank_cuda_workspace(B, HW, &needed);
  if (status != 0) return status;
  if (workspace_bytes < needed) return static_cast<int>(cudaErrorInvalidValue);
  const long long n = static_cast<long long>(B) * HW;
  if (n == 0) return 0;
  char* ws = static_cast<char*>(workspace);
  auto* keys_in = reinterpret_cast<unsigned long long*>(ws);
  ws += align256(n * sizeof(unsigned long long));
  auto* keys_out = reinterpret_cast<unsigned long long*>(ws);
  ws += align256(n * sizeof(unsigned long long));
  auto* idx_in = reinterpret_cast<int*>(ws);
  ws += align256(n * sizeof(int));
  auto* idx_out = reinterpret_cast<int*>(ws);
  ws += align256(n * sizeof(int));
  size_t temp = workspace_bytes - static_cast<size_t>(ws - static_cast<char*>(workspace));

  rank_keys_kernel<<<blocks_for(n), kThreads, 0, stream>>>(saliency, keys_in, idx_in, n, HW);
  int err = launched();
  if (err != 0) return err;
  // LSD radix sort is stable: equal keys keep idx ascending, so ties break by flat index
  err = static_cast<int>(cub::DeviceRadixSort::SortPairs(ws, temp, keys_in, keys_out, idx_in, idx_out,
                                                         static_cast<int>(n), 0, 32 + bits_for(B), stream));
  if (err != 0) return err;
  rank_scatter_kernel<<<blocks_for(n), kThreads, 0, stream>>>(idx_out, rank, n, HW);
  return launched();
}

extern "C" int xai_perturb_by_rank_cuda(const float* images, const int64_t* rank, const float* baselines,
                                        const int64_t* counts, float* out, int B, int C, int HW, int S, int insertion,
                                        cudaStream_t stream) {
  if (B < 0 || C < 0 || HW < 0 || S < 0) return static_cast<int>(cudaErrorInvalidValue);
  const long long total = static_cast<long long>(B) * S * C * HW;
  if (total == 0) return 0;
  perturb_kernel<<<blocks_for(total), kThreads, 0, stream>>>(images, rank, baselines, counts, out, B, C, HW, S,
                                                             insertion != 0);
  return launched();
}

extern "C" int xai_auc_cuda(const float* scores, const double* x, float* out, int N, int S, int rule,
                            cudaStream_t stream) {
  if (N < 0 || S < 2 || (rule != 0 && rule != 1)) return static_cast<int>(cudaErrorInvalidValue);
  if (N == 0) return 0;
  auc_kernel<<<(N + kThreads - 1) / kThreads, kThreads, 0, stream>>>(scores, x, out, N, S, rule);
  return launched();
}

extern "C" const char* xai_cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }
