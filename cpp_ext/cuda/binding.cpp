// Torch binding of the CUDA kernels (ops_cuda.cu). Built only where torch has CUDA, by engine/ops/_ext.load_cuda():
//   torch.utils.cpp_extension.load(name="xai_engine_ops_cuda", sources=[binding.cpp, ops_cuda.cu], with_cuda=True)
// The module mirrors the CPU module's functions (cpp_ext/ops.cpp), so engine.ops dispatches to either by device.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <climits>
#include <optional>

#include "ops_cuda.h"

namespace {

void check_cuda(const torch::Tensor& t, const char* name, torch::ScalarType dtype) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor; move it with .cuda().");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type(), ".");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous; call .contiguous() first.");
}

void check_status(int code, const char* what) {
  TORCH_CHECK(code == 0, what, " failed: ", xai_cuda_error_string(code), ".");
}

int as_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= INT_MAX, what, " = ", v, " does not fit the CUDA kernels' int sizes; split the batch.");
  return static_cast<int>(v);
}

torch::Tensor mask_tokens(const torch::Tensor& tokens, const torch::Tensor& masks) {
  check_cuda(tokens, "tokens", torch::kFloat32);
  check_cuda(masks, "masks", torch::kFloat32);
  TORCH_CHECK(tokens.dim() == 3 && masks.dim() == 2 && masks.size(1) == tokens.size(1),
              "tokens must be (B, T, D) and masks (N, T), got ", tokens.sizes(), " and ", masks.sizes(), ".");
  const c10::cuda::CUDAGuard guard(tokens.device());
  const int64_t B = tokens.size(0), T = tokens.size(1), D = tokens.size(2), N = masks.size(0);
  auto out = torch::empty({B * N, T, D}, tokens.options());
  check_status(xai_mask_tokens_cuda(tokens.data_ptr<float>(), masks.data_ptr<float>(), out.data_ptr<float>(),
                                    as_int(B, "B"), as_int(T, "T"), as_int(D, "D"), as_int(N, "N"),
                                    c10::cuda::getCurrentCUDAStream()),
               "xai_mask_tokens_cuda");
  return out;
}

torch::Tensor mask_feature_map(const torch::Tensor& features, const torch::Tensor& masks) {
  check_cuda(features, "features", torch::kFloat32);
  check_cuda(masks, "masks", torch::kFloat32);
  TORCH_CHECK(features.dim() == 4 && masks.dim() == 2 && masks.size(1) == features.size(2) * features.size(3),
              "features must be (B, C, h, w) and masks (N, h*w), got ", features.sizes(), " and ", masks.sizes(), ".");
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t B = features.size(0), C = features.size(1), P = features.size(2) * features.size(3);
  const int64_t N = masks.size(0);
  auto out = torch::empty({B * N, C, features.size(2), features.size(3)}, features.options());
  check_status(xai_mask_feature_map_cuda(features.data_ptr<float>(), masks.data_ptr<float>(), out.data_ptr<float>(),
                                         as_int(B, "B"), as_int(C, "C"), as_int(P, "h*w"), as_int(N, "N"),
                                         c10::cuda::getCurrentCUDAStream()),
               "xai_mask_feature_map_cuda");
  return out;
}

torch::Tensor saliency_rank(const torch::Tensor& saliency) {
  check_cuda(saliency, "saliency", torch::kFloat32);
  TORCH_CHECK(saliency.dim() == 3, "saliency must be (B, H, W), got ", saliency.sizes(), ".");
  const c10::cuda::CUDAGuard guard(saliency.device());
  const int B = as_int(saliency.size(0), "B");
  const int HW = as_int(saliency.size(1) * saliency.size(2), "H*W");
  auto rank = torch::empty({B, HW}, saliency.options().dtype(torch::kInt64));
  size_t bytes = 0;
  check_status(xai_saliency_rank_cuda_workspace(B, HW, &bytes), "xai_saliency_rank_cuda_workspace");
  // the caching allocator hands out 512-byte aligned blocks
  auto workspace = torch::empty({static_cast<int64_t>(bytes)}, saliency.options().dtype(torch::kUInt8));
  check_status(xai_saliency_rank_cuda(saliency.data_ptr<float>(), rank.data_ptr<int64_t>(), workspace.data_ptr(),
                                      bytes, B, HW, c10::cuda::getCurrentCUDAStream()),
               "xai_saliency_rank_cuda");
  return rank;
}

torch::Tensor perturb_from_rank(const torch::Tensor& images, const torch::Tensor& rank, const torch::Tensor& baselines,
                                const torch::Tensor& counts, bool insertion) {
  check_cuda(images, "images", torch::kFloat32);
  check_cuda(baselines, "baselines", torch::kFloat32);
  check_cuda(rank, "rank", torch::kInt64);
  check_cuda(counts, "counts", torch::kInt64);
  TORCH_CHECK(images.dim() == 4 && baselines.sizes() == images.sizes(),
              "images and baselines must be (B, C, H, W) of one shape, got ", images.sizes(), " and ",
              baselines.sizes(), ".");
  const int64_t B = images.size(0), C = images.size(1), HW = images.size(2) * images.size(3);
  TORCH_CHECK(rank.dim() == 2 && rank.size(0) == B && rank.size(1) == HW, "rank must be (B, H*W), got ", rank.sizes(),
              ".");
  TORCH_CHECK(counts.dim() == 1, "counts must be (S,), got ", counts.sizes(), ".");
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t S = counts.size(0);
  auto out = torch::empty({B, S, C, images.size(2), images.size(3)}, images.options());
  check_status(xai_perturb_by_rank_cuda(images.data_ptr<float>(), rank.data_ptr<int64_t>(), baselines.data_ptr<float>(),
                                        counts.data_ptr<int64_t>(), out.data_ptr<float>(), as_int(B, "B"),
                                        as_int(C, "C"), as_int(HW, "H*W"), as_int(S, "S"), insertion ? 1 : 0,
                                        c10::cuda::getCurrentCUDAStream()),
               "xai_perturb_by_rank_cuda");
  return out;
}

torch::Tensor auc(const torch::Tensor& scores, const std::optional<torch::Tensor>& x, int64_t rule) {
  check_cuda(scores, "scores", torch::kFloat32);
  TORCH_CHECK(scores.dim() == 2 && scores.size(1) >= 2, "scores must be (N, S) with S >= 2, got ", scores.sizes(), ".");
  const bool has_x = x.has_value() && x->defined();
  if (has_x) {
    check_cuda(*x, "x", torch::kFloat64);
    TORCH_CHECK(x->dim() == 1 && x->size(0) == scores.size(1), "x must be (S,), got ", x->sizes(), ".");
  }
  const c10::cuda::CUDAGuard guard(scores.device());
  auto out = torch::empty({scores.size(0)}, scores.options());
  check_status(xai_auc_cuda(scores.data_ptr<float>(), has_x ? x->data_ptr<double>() : nullptr, out.data_ptr<float>(),
                            as_int(scores.size(0), "N"), as_int(scores.size(1), "S"), static_cast<int>(rule),
                            c10::cuda::getCurrentCUDAStream()),
               "xai_auc_cuda");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xai-engine CUDA kernels (see cpp_ext/cuda/ops_cuda.h)";
  namespace py = pybind11;
  m.def("mask_tokens", &mask_tokens, py::arg("tokens"), py::arg("masks"));
  m.def("mask_feature_map", &mask_feature_map, py::arg("features"), py::arg("masks"));
  m.def("saliency_rank", &saliency_rank, py::arg("saliency"));
  m.def("perturb_from_rank", &perturb_from_rank, py::arg("images"), py::arg("rank"), py::arg("baselines"),
        py::arg("counts"), py::arg("insertion"));
  m.def("auc", &auc, py::arg("scores"), py::arg("x") = py::none(), py::arg("rule") = 0);
}
