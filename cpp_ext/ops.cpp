// CPU kernels of xai-engine, bound to Python with pybind11. Built just in time by engine/ops/_ext.py
// (torch.utils.cpp_extension.load, -O3 -fopenmp). See ops.h for the contract of each kernel.
#include "ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>

#include <cstdlib>
#endif

namespace xai {
namespace {

// Work items of at::parallel_for are sized to hold at least this many output elements.
constexpr int64_t kGrainElements = 32768;

int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_item));
}

#ifdef __linux__
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeOutputBytes = size_t{8} << 20;
#endif

// An uninitialised float32 tensor. Large ones (the stacks of masked or perturbed copies, easily 100+ MB) live on
// transparent huge pages where the kernel allows it (madvise mode): first-touch page faults otherwise cost more than
// the kernel itself. torch's own allocator does the same only with THP_MEM_ALLOC_ENABLE=1.
torch::Tensor empty_output(at::IntArrayRef sizes, const torch::TensorOptions& options) {
#ifdef __linux__
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * sizeof(float);
  void* data = nullptr;
  if (bytes >= kHugeOutputBytes && posix_memalign(&data, kHugePage, bytes) == 0) {
    madvise(data, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
    return torch::from_blob(data, sizes, [](void* p) { std::free(p); }, options);
  }
#endif
  return torch::empty(sizes, options);
}

void check_float_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor; move it with .cpu() or use the torch reference.");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, name, " must be float32; convert it with .float().");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous; call .contiguous() first.");
}

void check_int64_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor; move it with .cpu().");
  TORCH_CHECK(t.scalar_type() == torch::kInt64, name, " must be int64; convert it with .long().");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous; call .contiguous() first.");
}

// out[b, n, a, t, d] = x[b, a, t, d] * m[n, t]: tokens are A = 1, feature maps are A = C, T = h*w, D = 1.
void mask_rows(const float* x, const float* m, float* out, int64_t B, int64_t A, int64_t T, int64_t D, int64_t N) {
  const int64_t plane = T * D;
  at::parallel_for(0, B * N * A, grain_for(plane), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t a = i % A;
      const int64_t n = (i / A) % N;
      const int64_t b = i / (A * N);
      const float* xs = x + (b * A + a) * plane;
      const float* ms = m + n * T;
      float* o = out + i * plane;
      if (D == 1) {
        for (int64_t t = 0; t < T; ++t) o[t] = xs[t] * ms[t];
      } else {
        for (int64_t t = 0; t < T; ++t) {
          const float mt = ms[t];
          const float* xr = xs + t * D;
          float* orow = o + t * D;
          for (int64_t d = 0; d < D; ++d) orow[d] = xr[d] * mt;
        }
      }
    }
  });
}

// A key whose ascending order is the saliency order: value descending, NaN first, -0.0 == +0.0.
inline uint32_t descending_key(float v) {
  if (std::isnan(v)) return 0u;
  if (v == 0.0f) v = 0.0f;  // -0.0 ties with +0.0, as in torch.sort
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;  // >= 0x007FFFFF for every non-NaN value, so NaN (0) comes first
}

// Ranks of one (H*W) map into rank32; keys are (key << 32 | index), unique, so ties break by index ascending.
void rank_one(const float* s, int64_t hw, int32_t* rank32, std::vector<uint64_t>& keys) {
  keys.resize(static_cast<size_t>(hw));
  for (int64_t p = 0; p < hw; ++p) keys[p] = (static_cast<uint64_t>(descending_key(s[p])) << 32) | static_cast<uint64_t>(p);
  std::sort(keys.begin(), keys.end());
  for (int64_t i = 0; i < hw; ++i) rank32[keys[i] & 0xFFFFFFFFull] = static_cast<int32_t>(i);
}

}  // namespace

torch::Tensor mask_tokens(const torch::Tensor& tokens, const torch::Tensor& masks) {
  check_float_cpu(tokens, "tokens");
  check_float_cpu(masks, "masks");
  TORCH_CHECK(tokens.dim() == 3, "tokens must be (B, T, D), got ", tokens.sizes(), ".");
  TORCH_CHECK(masks.dim() == 2 && masks.size(1) == tokens.size(1), "masks must be (N, T) with T = tokens.shape[1] = ",
              tokens.size(1), ", got ", masks.sizes(), ".");
  const int64_t B = tokens.size(0), T = tokens.size(1), D = tokens.size(2), N = masks.size(0);
  auto out = empty_output({B * N, T, D}, tokens.options());
  if (out.numel() > 0) mask_rows(tokens.data_ptr<float>(), masks.data_ptr<float>(), out.data_ptr<float>(), B, 1, T, D, N);
  return out;
}

torch::Tensor mask_feature_map(const torch::Tensor& features, const torch::Tensor& masks) {
  check_float_cpu(features, "features");
  check_float_cpu(masks, "masks");
  TORCH_CHECK(features.dim() == 4, "features must be (B, C, h, w), got ", features.sizes(), ".");
  const int64_t B = features.size(0), C = features.size(1), h = features.size(2), w = features.size(3);
  TORCH_CHECK(masks.dim() == 2 && masks.size(1) == h * w, "masks must be (N, h*w) with h*w = ", h * w, ", got ",
              masks.sizes(), ".");
  const int64_t N = masks.size(0);
  auto out = empty_output({B * N, C, h, w}, features.options());
  if (out.numel() > 0)
    mask_rows(features.data_ptr<float>(), masks.data_ptr<float>(), out.data_ptr<float>(), B, C, h * w, 1, N);
  return out;
}

torch::Tensor saliency_rank(const torch::Tensor& saliency) {
  check_float_cpu(saliency, "saliency");
  TORCH_CHECK(saliency.dim() == 3, "saliency must be (B, H, W), got ", saliency.sizes(), ".");
  const int64_t B = saliency.size(0), hw = saliency.size(1) * saliency.size(2);
  TORCH_CHECK(hw <= std::numeric_limits<int32_t>::max(), "saliency maps above 2^31 pixels are not supported.");
  auto rank = torch::empty({B, hw}, saliency.options().dtype(torch::kInt64));
  const float* s = saliency.data_ptr<float>();
  int64_t* r = rank.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> keys;
    std::vector<int32_t> rank32(static_cast<size_t>(hw));
    for (int64_t b = begin; b < end; ++b) {
      rank_one(s + b * hw, hw, rank32.data(), keys);
      std::copy(rank32.begin(), rank32.end(), r + b * hw);
    }
  });
  return rank;
}

torch::Tensor perturb_from_rank(const torch::Tensor& images, const torch::Tensor& rank, const torch::Tensor& baselines,
                                const torch::Tensor& counts, bool insertion) {
  check_float_cpu(images, "images");
  check_float_cpu(baselines, "baselines");
  check_int64_cpu(rank, "rank");
  check_int64_cpu(counts, "counts");
  TORCH_CHECK(images.dim() == 4, "images must be (B, C, H, W), got ", images.sizes(), ".");
  TORCH_CHECK(baselines.sizes() == images.sizes(), "baselines must have the images' shape ", images.sizes(), ", got ",
              baselines.sizes(), ".");
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3), hw = H * W;
  TORCH_CHECK(rank.dim() == 2 && rank.size(0) == B && rank.size(1) == hw, "rank must be (B, H*W) = (", B, ", ", hw,
              "), got ", rank.sizes(), ".");
  TORCH_CHECK(counts.dim() == 1, "counts must be (S,), got ", counts.sizes(), ".");
  TORCH_CHECK(hw <= std::numeric_limits<int32_t>::max(), "images above 2^31 pixels are not supported.");
  const int64_t S = counts.size(0);
  auto out = empty_output({B, S, C, H, W}, images.options());
  if (out.numel() == 0) return out;

  // int32 ranks (compared against int32 counts) let the select below vectorise with 8 lanes. Clamping to [-1, hw]
  // keeps every comparison r < k (k in [0, hw]) as it was, even for a rank tensor that is not a permutation.
  std::vector<int32_t> rank32(static_cast<size_t>(B * hw));
  const int64_t* r64 = rank.data_ptr<int64_t>();
  for (int64_t i = 0; i < B * hw; ++i) rank32[i] = static_cast<int32_t>(std::clamp<int64_t>(r64[i], -1, hw));
  std::vector<int32_t> k32(static_cast<size_t>(S));
  const int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t s = 0; s < S; ++s) k32[s] = static_cast<int32_t>(std::clamp<int64_t>(c[s], 0, hw));

  const float* img = images.data_ptr<float>();
  const float* base = baselines.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B * S * C, grain_for(hw), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t ch = i % C;
      const int64_t s = (i / C) % S;
      const int64_t b = i / (C * S);
      const int32_t k = k32[s];
      const int32_t* rk = rank32.data() + b * hw;
      const float* inside = (insertion ? img : base) + (b * C + ch) * hw;  // pixels with rank < k
      const float* outside = (insertion ? base : img) + (b * C + ch) * hw;
      float* dst = o + i * hw;
      for (int64_t p = 0; p < hw; ++p) dst[p] = rk[p] < k ? inside[p] : outside[p];
    }
  });
  return out;
}

torch::Tensor auc(const torch::Tensor& scores, const std::optional<torch::Tensor>& x, int64_t rule) {
  check_float_cpu(scores, "scores");
  TORCH_CHECK(scores.dim() == 2, "scores must be (N, S), got ", scores.sizes(), ".");
  TORCH_CHECK(rule == 0 || rule == 1, "rule must be 0 (trapezoid) or 1 (rise), got ", rule, ".");
  const int64_t N = scores.size(0), S = scores.size(1);
  TORCH_CHECK(S >= 2, "scores need at least 2 steps per row for an AUC, got S = ", S, ".");
  std::vector<double> xs(static_cast<size_t>(S));
  if (x.has_value() && x->defined()) {
    TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == torch::kFloat64 && x->is_contiguous() && x->dim() == 1 &&
                    x->size(0) == S,
                "x must be a contiguous CPU float64 tensor of shape (S,) = (", S, ",).");
    std::copy(x->data_ptr<double>(), x->data_ptr<double>() + S, xs.begin());
  } else {
    for (int64_t i = 0; i < S; ++i) xs[i] = static_cast<double>(i) / static_cast<double>(S - 1);
  }
  const double span = xs[S - 1] - xs[0];
  TORCH_CHECK(rule == 1 || span != 0.0, "x must span a non-empty range (x[-1] != x[0]).");
  auto out = torch::empty({N}, scores.options());
  const float* y = scores.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, (int64_t{1} << 20) / S), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const float* row = y + n * S;
      double acc = 0.0;
      if (rule == 0) {
        for (int64_t i = 0; i + 1 < S; ++i)
          acc += (xs[i + 1] - xs[i]) * (static_cast<double>(row[i]) + static_cast<double>(row[i + 1]));
        o[n] = static_cast<float>(acc / 2.0 / span);
      } else {
        for (int64_t i = 0; i < S; ++i) acc += static_cast<double>(row[i]);
        acc -= (static_cast<double>(row[0]) + static_cast<double>(row[S - 1])) / 2.0;
        o[n] = static_cast<float>(acc / static_cast<double>(S - 1));
      }
    }
  });
  return out;
}

}  // namespace xai

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xai-engine CPU kernels (see cpp_ext/ops.h)";
  namespace py = pybind11;
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("mask_tokens", &xai::mask_tokens, "tokens (B,T,D) x masks (N,T) -> (B*N,T,D)", py::arg("tokens"),
        py::arg("masks"), nogil);
  m.def("mask_feature_map", &xai::mask_feature_map, "features (B,C,h,w) x masks (N,h*w) -> (B*N,C,h,w)",
        py::arg("features"), py::arg("masks"), nogil);
  m.def("saliency_rank", &xai::saliency_rank, "saliency (B,H,W) -> rank (B,H*W) int64", py::arg("saliency"), nogil);
  m.def("perturb_from_rank", &xai::perturb_from_rank, "images, rank, baselines, counts, insertion -> (B,S,C,H,W)",
        py::arg("images"), py::arg("rank"), py::arg("baselines"), py::arg("counts"), py::arg("insertion"), nogil);
  m.def("auc", &xai::auc, "scores (N,S), x (S,) float64 or None, rule 0|1 -> (N,)", py::arg("scores"),
        py::arg("x") = py::none(), py::arg("rule") = 0, nogil);
}
