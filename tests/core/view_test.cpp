// SPDX-License-Identifier: MIT
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <rsq/core/tensor.hpp>
#include <rsq/core/view.hpp>

TEST_SUITE("core.view") {
  TEST_CASE("views of Eigen matrices see the same elements in either storage order") {
    Eigen::Matrix<float, 3, 4, Eigen::RowMajor> r;
    Eigen::Matrix<float, 3, 4, Eigen::ColMajor> c;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) r(i, j) = c(i, j) = float(10 * i + j);
    rsq::matrix_view<const float> vr(r), vc(c);
    CHECK(vr.rows() == 3);
    CHECK(vr.cols() == 4);
    CHECK(vr.is_contiguous());
    CHECK_FALSE(vc.is_contiguous());
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) {
        CHECK(vr(i, j) == r(i, j));
        CHECK(vc(i, j) == c(i, j));
      }
    auto blk = r.block(1, 1, 2, 2);
    rsq::matrix_view<float> vb(blk);
    vb(1, 1) = -1.f;
    CHECK(r(2, 2) == -1.f);
  }

  TEST_CASE("views of xtensor arrays, pointers, and slices") {
    rsq::matrix<double> a({2, 3});
    for (std::size_t i = 0; i < a.size(); ++i) a.data()[i] = double(i);
    auto v = rsq::view(a);
    CHECK(v(1, 2) == 5.0);
    CHECK(v[1](0) == 3.0);
    double buf[6] = {0, 1, 2, 3, 4, 5};
    rsq::matrix_view<const double> p(buf, 3, 2);
    CHECK(p(2, 1) == 5.0);
    xt::xtensor<float, 3> b({2, 2, 2});
    rsq::batch_view<const float> vb(b);
    CHECK(vb.extent(0) == 2);
    CHECK(vb[1].rows() == 2);
  }
}
