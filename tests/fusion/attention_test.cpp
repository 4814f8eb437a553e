#include "patchwise/fusion/attention.h"

#include "support/test_support.h"

namespace patchwise {
namespace {

AttentionPool make_pool(bool gated, int64_t positions = 0) {
  AttentionPoolOptions o;
  o.features = 5;
  o.hidden = 4;
  o.gated = gated;
  o.positions = positions;
  AttentionPool pool(o);
  pool->to(torch::kFloat64);
  return pool;
}

class AttentionTest : public test::SeededTest {};

TEST_F(AttentionTest, WeightsAreASoftmaxOverPatches) {
  for (bool gated : {false, true}) {
    AttentionPool pool = make_pool(gated);
    at::Tensor h = torch::randn({3, 6, 5}, torch::kFloat64);
    at::Tensor a = pool->weights(h);
    ASSERT_EQ(a.sizes(), (std::vector<int64_t>{3, 6}));
    EXPECT_TRUE((a > 0).all().item<bool>());
    // Float64: a softmax of 6 scores sums to 1 within about 6 u (u = 2^-53), far inside
    // allclose's default rtol 1e-5.
    EXPECT_TRUE(torch::allclose(a.sum(1), torch::ones({3}, torch::kFloat64)));
  }
}

TEST_F(AttentionTest, WeightsMatchTheFormulaOfIlseEtAl) {
  AttentionPool pool = make_pool(/*gated=*/true);
  auto params = pool->named_parameters();
  at::Tensor V = params["V"], Vb = params["V_bias"], U = params["U"], Ub = params["U_bias"],
             w = params["w"];
  at::Tensor h = torch::randn({1, 3, 5}, torch::kFloat64);
  std::vector<double> scores;
  for (int i = 0; i < 3; ++i) {
    at::Tensor hi = h[0][i];
    at::Tensor gate = torch::sigmoid(torch::mv(U, hi) + Ub);
    scores.push_back(torch::dot(w, torch::tanh(torch::mv(V, hi) + Vb) * gate).item<double>());
  }
  at::Tensor expected = torch::softmax(torch::tensor(scores, torch::kFloat64), 0);
  // Float64, scores of sums of 5 and 4 products of order 1 summed in other orders: within
  // ~10 u (u = 2^-53) = 1e-15, and a softmax's weights move by at most twice their scores'
  // largest change; 1e-12 leaves a factor 500.
  EXPECT_TRUE(torch::allclose(pool->weights(h)[0], expected, 1e-12, 1e-12));
}

TEST_F(AttentionTest, PoolIsTheWeightedSumOfFeatures) {
  at::Tensor h = torch::tensor({1.0, 2.0, 3.0, 4.0}, torch::kFloat64).view({1, 2, 2});
  at::Tensor a = torch::tensor({0.25, 0.75}, torch::kFloat64).view({1, 2});
  at::Tensor z = AttentionPoolImpl::pool(h, a);
  // Exact: quarters of small integers, and their sums, are doubles.
  EXPECT_DOUBLE_EQ(z[0][0].item<double>(), 0.25 * 1 + 0.75 * 3);
  EXPECT_DOUBLE_EQ(z[0][1].item<double>(), 0.25 * 2 + 0.75 * 4);
}

// A numerical gradient check: d loss / d parameter by autograd against central
// differences, for every parameter entry, on a tiny case in double precision.
TEST_F(AttentionTest, GradientsMatchCentralDifferences) {
  for (bool gated : {false, true}) {
    AttentionPool pool = make_pool(gated, /*positions=*/3);
    for (auto& p : pool->parameters()) p.data().normal_();  // also move the zero embedding
    at::Tensor h = torch::randn({2, 3, 5}, torch::kFloat64);
    at::Tensor target = torch::randn({2, 5}, torch::kFloat64);
    auto loss_of = [&] { return (AttentionPoolImpl::pool(h, pool->weights(h)) * target).sum(); };
    for (auto& p : pool->parameters()) p.mutable_grad() = at::Tensor();
    loss_of().backward();
    constexpr double kEps = 1e-6;
    for (auto& param : pool->parameters()) {
      at::Tensor flat = param.data().view({-1});
      at::Tensor grad = param.grad().view({-1});
      for (int64_t i = 0; i < flat.numel(); ++i) {
        const double saved = flat[i].item<double>();
        flat[i] = saved + kEps;
        const double up = loss_of().item<double>();
        flat[i] = saved - kEps;
        const double down = loss_of().item<double>();
        flat[i] = saved;
        // Central differences err by eps^2 / 6 |f'''| (~1e-12 for third derivatives of order
        // 1 to 10) plus the loss's rounding over eps: 10 products of order 1 summed, within
        // ~10 u of their magnitudes (u = 2^-53), 1e-14 / eps = 1e-8. 1e-6 leaves a factor 100.
        EXPECT_NEAR(grad[i].item<double>(), (up - down) / (2 * kEps), 1e-6);
      }
    }
  }
}

TEST_F(AttentionTest, PositionEmbeddingChangesTheWeightsOfIdenticalPatches) {
  AttentionPool pool = make_pool(false, /*positions=*/3);
  at::Tensor h = torch::randn({1, 1, 5}, torch::kFloat64).expand({1, 3, 5}).contiguous();
  // Identical patches: equal scores up to float64 rounding (1e-15), weights 1/3 far inside
  // allclose's default rtol 1e-5; a random embedding then moves them by order 0.1.
  EXPECT_TRUE(torch::allclose(pool->weights(h), torch::full({1, 3}, 1.0 / 3, torch::kFloat64)));
  pool->named_parameters()["position"].data().normal_();
  EXPECT_FALSE(torch::allclose(pool->weights(h), torch::full({1, 3}, 1.0 / 3, torch::kFloat64)));
}

}  // namespace
}  // namespace patchwise
