// concat: log_softmax( W [h_1; ...; h_P] + b ), a linear classifier over the patches'
// features side by side in grid order (fusion.h). A fixed grid only.
#include <torch/torch.h>

#include <cmath>

#include "patchwise/fusion/fusion.h"
#include "rules.h"

namespace patchwise::detail {
namespace {

class ConcatHeadImpl : public FusionHeadImpl {
 public:
  /// W [K,P*F] and b [K], initialized as torch::nn::Linear initializes its own.
  ConcatHeadImpl(int64_t width, int64_t classes) {
    weight_ = register_parameter("weight", torch::empty({classes, width}));
    bias_ = register_parameter("bias", torch::empty({classes}));
    torch::NoGradGuard no_grad;
    torch::nn::init::kaiming_uniform_(weight_, std::sqrt(5.0));
    const double bound = 1.0 / std::sqrt(static_cast<double>(width));
    torch::nn::init::uniform_(bias_, -bound, bound);
  }

  Fused fuse(const at::Tensor& features, const at::Tensor& mask, BackboneImpl&) override {
    TORCH_CHECK(!mask.defined(), "PatchClassifier: concat fusion needs full grids, not bags");
    Fused out;
    at::Tensor logits = torch::nn::functional::linear(features.flatten(1), weight_, bias_);
    out.log_probs = torch::log_softmax(logits, /*dim=*/1);
    return out;
  }

  std::vector<at::Tensor> class_parameters() const override { return {weight_, bias_}; }

 private:
  at::Tensor weight_, bias_;
};

std::shared_ptr<FusionHeadImpl> make_concat(const FusionHeadOptions& o) {
  check_fusion_fits(FusionRule::kConcat, /*tiled=*/o.positions == 0);
  return std::make_shared<ConcatHeadImpl>(o.positions * o.features, o.classes);
}

}  // namespace

FusionRuleInfo concat_rule() {
  FusionRuleInfo r;
  r.name = "concat";
  r.summary = "a linear classifier over the patches' features side by side (fixed grids)";
  r.needs_positions = true;
  r.make_head = make_concat;
  r.module = "concat";
  return r;
}

}  // namespace patchwise::detail
