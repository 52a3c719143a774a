// SPDX-License-Identifier: MIT
// Tests of the kernels' matrix products (rsq/backend/cpu/gemm.hpp) against float64 products: every storage order of
// the two factors (transposed blocks included), blocks of larger matrices, sizes past one packing block, the
// triangular update (strict upper part untouched), on one thread, inside a parallel region, and tiled over several
// threads outside one; the packing buffers kept per thread and released on request; and blocks packed once
// (packed_rows) for several products. (That the tiled product gives the same bits for every thread count is
// tests/linalg/determinism_test.cpp.)
#include <doctest/doctest.h>

#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <rsq/backend/cpu/gemm.hpp>

#include "linalg/linalg_support.hpp"

namespace {

using namespace linalg_test;
using rsq::cpu::detail::gemm_update;
using rsq::cpu::detail::gemm_update_lower;

/// Sets Eigen's thread count for one scope.
struct eigen_threads {
  int saved = Eigen::nbThreads();
  explicit eigen_threads(int n) { Eigen::setNbThreads(n); }
  ~eigen_threads() { Eigen::setNbThreads(saved); }
};

/// C(m x n) += alpha A B for A, B stored both ways (B given transposed or not), as blocks at an offset inside
/// larger matrices, against the float64 product; the rest of C's storage is untouched.
template <class T>
void check_gemm(Eigen::Index m, Eigen::Index n, Eigen::Index k, double tol) {
  matd const a = random_matrix(m, k, 11), b = random_matrix(k, n, 12), c0 = random_matrix(m + 3, n + 2, 13);
  T const alpha = T(-0.75);
  matd expected = c0;
  expected.block(1, 2, m, n) += double(alpha) * a * b;
  // Every combination of storage orders, each operand a block of a larger matrix.
  mat<T> a_col = mat<T>::Zero(m + 4, k + 1), bt_col = mat<T>::Zero(n + 5, k + 2);
  row_mat<T> a_row = row_mat<T>::Zero(m + 2, k + 3), b_row = row_mat<T>::Zero(k + 1, n + 4);
  a_col.block(2, 1, m, k) = a.cast<T>();
  a_row.block(1, 2, m, k) = a.cast<T>();
  bt_col.block(3, 2, n, k) = b.transpose().cast<T>();
  b_row.block(1, 3, k, n) = b.cast<T>();
  auto run = [&](auto const& lhs, auto const& rhs, char const* what) {
    mat<T> c = c0.cast<T>();
    gemm_update<T>(c.block(1, 2, m, n), lhs, rhs, alpha);
    CHECK_MESSAGE(rel_diff(c.template cast<double>(), expected) < tol, what, " m ", m, " n ", n, " k ", k);
    mat<T> outside = c0.cast<T>();
    outside.block(1, 2, m, n) = c.block(1, 2, m, n);
    CHECK_MESSAGE(c == outside, what, ": wrote outside its block");
  };
  auto const lc = a_col.block(2, 1, m, k);
  auto const lr = a_row.block(1, 2, m, k);
  auto const rc = bt_col.block(3, 2, n, k).transpose();  // a row-major view of B
  auto const rr = b_row.block(1, 3, k, n);
  run(lc, rr, "col x row");
  run(lc, rc, "col x transposed col");
  run(lr, rr, "row x row");
  run(lr, rc, "row x transposed col");
  mat<T> const b_col = b.cast<T>();
  run(lc, b_col, "col x col");
  run(a_row.block(1, 2, m, k), b_col, "row x col");
}

template <class T>
void check_gemm_lower(Eigen::Index n, Eigen::Index k, double tol) {
  matd const a = random_matrix(n, k, 21), c0 = random_matrix(n, n, 22);
  T const alpha = T(0.5);
  matd const full = c0 + double(alpha) * a * a.transpose();
  row_mat<T> const ar = a.cast<T>();
  mat<T> const ac = a.cast<T>();
  matd const lower_expected = full.template triangularView<Eigen::Lower>();
  mat<T> const upper_before = c0.cast<T>().template triangularView<Eigen::StrictlyUpper>();
  for (bool row_major : {true, false}) {
    mat<T> c = c0.cast<T>();
    if (row_major) gemm_update_lower<T>(c, ar, ar.transpose(), alpha);
    else gemm_update_lower<T>(c, ac, ac.transpose(), alpha);
    matd const lower_got = c.template cast<double>().template triangularView<Eigen::Lower>();
    CHECK_MESSAGE(rel_diff(lower_got, lower_expected) < tol, "n ", n, " k ", k, " row-major A ", row_major);
    mat<T> const upper_after = c.template triangularView<Eigen::StrictlyUpper>();
    CHECK(upper_after == upper_before);
  }
}

template <class T>
void check_all_shapes(double tol) {
  // Small, odd, and past one packing block in every dimension (Eigen's mc, nc and kc are a few hundred at most).
  struct shape {
    Eigen::Index m, n, k;
  };
  for (auto const s : {shape{1, 1, 1}, shape{7, 5, 3}, shape{37, 53, 29}, shape{130, 70, 300}, shape{700, 600, 650}})
    check_gemm<T>(s.m, s.n, s.k, tol);
  for (auto const s : {shape{1, 1, 1}, shape{9, 9, 4}, shape{100, 100, 33}, shape{640, 640, 520}})
    check_gemm_lower<T>(s.m, s.k, tol);
}

}  // namespace

TEST_CASE_TEMPLATE("gemm_update and gemm_update_lower equal float64 products on one thread", T, float, double) {
  eigen_threads const one(1);
  check_all_shapes<T>(sizeof(T) == 4 ? 1e-6 : 1e-14);
}

#if defined(_OPENMP)
TEST_CASE("gemm_update inside a parallel region: each thread's products with its own packing buffers") {
  eigen_threads const two(2);
  bool ok = true;
#pragma omp parallel num_threads(2) reduction(&& : ok)
  {
    int const t = omp_get_thread_num();
    Eigen::Index const m = 300 + 17 * t, n = 280, k = 310;
    matd const a = random_matrix(m, k, 31 + std::uint64_t(t)), b = random_matrix(k, n, 41 + std::uint64_t(t));
    mat<float> const af = a.cast<float>(), bf = b.cast<float>();
    for (int rep = 0; rep < 3; ++rep) {
      mat<float> c = mat<float>::Zero(m, n);
      gemm_update<float>(c, af, bf, 1.0f);
      ok = ok && rel_diff(c.cast<double>(), matd(a * b)) < 1e-6;
    }
  }
  CHECK(ok);
}

TEST_CASE("gemm_update outside a parallel region with several Eigen threads (tiled over them)") {
  eigen_threads const two(2);
  check_gemm<float>(500, 400, 450, 1e-6);
  check_gemm_lower<float>(300, 200, 1e-6);
}
#endif

TEST_CASE("empty products change nothing") {
  eigen_threads const one(1);
  mat<float> c = mat<float>::Constant(4, 3, 2.0f);
  mat<float> const a(4, 0), b(0, 3);
  gemm_update<float>(c, a, b, 1.0f);
  CHECK(c == mat<float>::Constant(4, 3, 2.0f));
  mat<float> e(0, 0);
  gemm_update_lower<float>(e, mat<float>(0, 5), mat<float>(5, 0), 1.0f);
}

TEST_CASE("packing buffers are kept between products and released with the scratch memory") {
  eigen_threads const one(1);
  rsq::cpu::release_scratch();
  REQUIRE(rsq::cpu::scratch_bytes() == 0);
  mat<float> const a = random_matrix(256, 256, 51).cast<float>();
  mat<float> c = mat<float>::Zero(256, 256);
  gemm_update<float>(c, a, a, 1.0f);
  auto const kept = rsq::cpu::scratch_bytes();
  CHECK(kept >= 256 * 16 * sizeof(float));  // at least a panel of each factor
  gemm_update<float>(c, a, a, 1.0f);
  CHECK(rsq::cpu::scratch_bytes() == kept);  // the same buffers again
  CHECK(rel_diff(c.cast<double>(), matd(2 * a.cast<double>() * a.cast<double>())) < 1e-6);
  rsq::cpu::release_scratch();
  CHECK(rsq::cpu::scratch_bytes() == 0);
}

#if RSQ_EIGEN_KEPT_PACKING
TEST_CASE_TEMPLATE("packed_rows: blocks packed once give float64 products, over several slabs and odd sizes", T, float,
                   double) {
  // Row counts that end in every narrower panel of Eigen's kernel; depths over several slabs, the last one short.
  for (Eigen::Index rows : {1, 5, 37, 100, 257}) {
    for (Eigen::Index depth : {1, 300, 1500}) {
      CAPTURE(rows);
      CAPTURE(depth);
      Eigen::Index const other = rows / 2 + 3;
      matd const a = random_matrix(rows, depth, 61), b = random_matrix(other, depth, 62);
      matd const c0 = random_matrix(rows, rows + other, 63);
      Eigen::Index const slab = rsq::cpu::detail::packed_rows<T>::slab_depth(rows, rows, depth) / 2 + 1;
      std::vector<std::byte, Eigen::aligned_allocator<std::byte>> sa(
          rsq::cpu::detail::packed_rows<T>::bytes(rows, depth, slab)),
          sb(rsq::cpu::detail::packed_rows<T>::bytes(other, depth, slab));
      rsq::cpu::detail::packed_rows<T> const pa(sa.data(), rows, depth, slab), pb(sb.data(), other, depth, slab);
      REQUIRE(pa.slabs() == (depth + slab - 1) / slab);
      // Each slab from its own column-major copy with a leading dimension larger than the rows.
      for (Eigen::Index s = 0; s < pa.slabs(); ++s) {
        mat<T> xa = random_matrix(rows + 3, pa.depth_of(s), 64).template cast<T>();  // rows past `rows` must not be read
        mat<T> xb = random_matrix(other + 2, pa.depth_of(s), 65).template cast<T>();
        xa.topRows(rows) = a.middleCols(s * slab, pa.depth_of(s)).template cast<T>();
        xb.topRows(other) = b.middleCols(s * slab, pa.depth_of(s)).template cast<T>();
        pa.pack_slab(s, xa.data(), xa.outerStride());
        pb.pack_slab(s, xb.data(), xb.outerStride());
      }
      T const alpha = T(0.5);
      mat<T> c = c0.template cast<T>();
      pa.syrk_update(c.leftCols(rows), alpha);
      pa.gemm_update(c.rightCols(other), pb, alpha);
      matd expected = c0;
      expected.leftCols(rows) += 0.5 * a * a.transpose();
      expected.rightCols(other) += 0.5 * a * b.transpose();
      matd got = c.template cast<double>();
      matd const upper_before = c0.leftCols(rows).template triangularView<Eigen::StrictlyUpper>();
      matd const upper_after = got.leftCols(rows).template triangularView<Eigen::StrictlyUpper>();
      CHECK(upper_after == matd(upper_before.template cast<T>().template cast<double>()));  // not touched
      got.leftCols(rows).template triangularView<Eigen::StrictlyUpper>() =
          expected.leftCols(rows).template triangularView<Eigen::StrictlyUpper>();
      CHECK(rel_diff(got, expected) < (std::is_same_v<T, float> ? 1e-5 : 1e-13));
    }
  }
}

TEST_CASE_TEMPLATE("packed_rows: packing straight from scaled columns writes what Eigen's packing writes", T, float,
                   double) {
#if defined(__x86_64__) || defined(__aarch64__)
  CHECK_MESSAGE(rsq::cpu::detail::packed_rows<T>::direct_packing(), "Eigen's layouts as pack_slab_direct writes them");
#endif
  if (!rsq::cpu::detail::packed_rows<T>::direct_packing()) return;
  for (Eigen::Index rows : {1, 3, 21, 37, 100, 257}) {
    CAPTURE(rows);
    Eigen::Index const depth = 700, slab = 300;
    mat<T> const x = random_matrix(rows, depth, 71).template cast<T>();  // column k: token k
    Eigen::VectorXd const factor = Eigen::VectorXd::Random(depth).array() + 1.5;
    using packing = rsq::cpu::detail::packed_rows<T>;
    std::vector<std::byte, Eigen::aligned_allocator<std::byte>> sa(packing::bytes(rows, depth, slab)), sb(sa.size());
    packing const gathered(sa.data(), rows, depth, slab), direct(sb.data(), rows, depth, slab);
    for (Eigen::Index s = 0; s < gathered.slabs(); ++s) {
      mat<T> const scaled = x.middleCols(s * slab, gathered.depth_of(s)) *
                            factor.segment(s * slab, gathered.depth_of(s)).template cast<T>().asDiagonal();
      gathered.pack_slab(s, scaled.data(), scaled.outerStride());
      direct.pack_slab_direct(s, [&](Eigen::Index k) {
        return std::pair<T const*, T>(x.col(s * slab + k).data(), T(factor(s * slab + k)));
      });
    }
    CHECK(sa == sb);
    // And the products read it: C = A Aᵀ for A = x scaled, against float64.
    matd const a = (x.template cast<double>() * factor.template cast<T>().template cast<double>().asDiagonal());
    mat<T> c = mat<T>::Zero(rows, rows);
    direct.syrk_update(c, T(1));
    matd const expected = a * a.transpose();
    matd got = c.template cast<double>();
    got.template triangularView<Eigen::StrictlyUpper>() = expected.template triangularView<Eigen::StrictlyUpper>();
    CHECK(rel_diff(got, expected) < (std::is_same_v<T, float> ? 1e-5 : 1e-13));
  }
}
#endif
