// CPU kernels of xai-engine (ATen + OpenMP through at::parallel_for). Python reference: engine/ops/reference.py.
//
// Every kernel reproduces its torch reference exactly: masking multiplies each element once (x * m), perturbation
// copies elements, and the AUC accumulates in double like the reference does.
#pragma once

#include <torch/extension.h>

#include <optional>

namespace xai {

// tokens (B, T, D) x masks (N, T) -> (B*N, T, D); copy b*N+n = masks[n] (broadcast over D) * tokens[b].
torch::Tensor mask_tokens(const torch::Tensor& tokens, const torch::Tensor& masks);

// features (B, C, h, w) x masks (N, h*w) -> (B*N, C, h, w); copy b*N+n = features[b] * masks[n] (per position).
torch::Tensor mask_feature_map(const torch::Tensor& features, const torch::Tensor& masks);

// saliency (B, H, W) -> (B, H*W) int64: the rank of each pixel, 0 = most salient. Order: value descending, NaN
// first, -0.0 == +0.0, ties by flat index ascending (torch.argsort(descending=True, stable=True)).
torch::Tensor saliency_rank(const torch::Tensor& saliency);

// images (B, C, H, W), rank (B, H*W) int64, baselines (B, C, H, W), counts (S,) int64 -> (B, S, C, H, W).
// Step s with k = clamp(counts[s], 0, H*W): insertion takes pixels with rank < k from the image, the rest from the
// baseline; deletion takes them from the baseline, the rest from the image.
torch::Tensor perturb_from_rank(const torch::Tensor& images, const torch::Tensor& rank, const torch::Tensor& baselines,
                                const torch::Tensor& counts, bool insertion);

// scores (N, S) float32 -> (N,) float32. rule 0 = trapezoid over x (S,) float64 (undefined: linspace(0, 1, S)),
// divided by x[S-1] - x[0]; rule 1 = RISE: (sum - a_0 / 2 - a_{S-1} / 2) / (S - 1).
torch::Tensor auc(const torch::Tensor& scores, const std::optional<torch::Tensor>& x, int64_t rule);

}  // namespace xai
