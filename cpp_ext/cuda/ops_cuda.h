// C interface of the CUDA kernels of xai-engine (cpp_ext/cuda/ops_cuda.cu). No torch headers: the .cu compiles with
// plain nvcc, and cpp_ext/cuda/binding.cpp exposes these functions to torch where torch has CUDA.
//
// Every function only enqueues work on `stream` and returns 0 (cudaSuccess) or a cudaError_t code; pointers are
// device pointers to contiguous row-major arrays. Contracts match the CPU kernels (cpp_ext/ops.h) bit for bit.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

// tokens (B, T, D) x masks (N, T) -> out (B*N, T, D): out[b*N+n, t, d] = tokens[b, t, d] * masks[n, t].
int xai_mask_tokens_cuda(const float* tokens, const float* masks, float* out, int B, int T, int D, int N,
                         cudaStream_t stream);

// features (B, C, P) x masks (N, P) -> out (B*N, C, P) with P = h*w: out[b*N+n, c, p] = features[b, c, p] * masks[n, p].
int xai_mask_feature_map_cuda(const float* features, const float* masks, float* out, int B, int C, int P, int N,
                              cudaStream_t stream);

// Bytes of device workspace xai_saliency_rank_cuda needs for B maps of HW pixels.
int xai_saliency_rank_cuda_workspace(int B, int HW, size_t* bytes);

// saliency (B, HW) -> rank (B, HW) int64, 0 = most salient; value descending, NaN first, -0.0 == +0.0, ties by index
// ascending (one stable radix sort). workspace: at least xai_saliency_rank_cuda_workspace bytes, 256-byte aligned.
int xai_saliency_rank_cuda(const float* saliency, int64_t* rank, void* workspace, size_t workspace_bytes, int B, int HW,
                           cudaStream_t stream);

// images, baselines (B, C, HW), rank (B, HW), counts (S,) -> out (B, S, C, HW). With k = clamp(counts[s], 0, HW),
// a pixel with rank < k comes from the image (insertion != 0) or the baseline (insertion == 0), the others from the
// other one.
int xai_perturb_by_rank_cuda(const float* images, const int64_t* rank, const float* baselines, const int64_t* counts,
                             float* out, int B, int C, int HW, int S, int insertion, cudaStream_t stream);

// scores (N, S) -> out (N,), accumulated in double. rule 0: trapezoid over x (S,) (NULL: linspace(0, 1, S)) divided
// by x[S-1] - x[0]; rule 1: RISE (sum - a_0/2 - a_{S-1}/2) / (S-1).
int xai_auc_cuda(const float* scores, const double* x, float* out, int N, int S, int rule, cudaStream_t stream);

// Text of a code returned above.
const char* xai_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif
