// SPDX-License-Identifier: MIT
// Memory of every backend (rsq/backend/memory.hpp, TEST_CASE_TEMPLATE over RSQ_TEST_BACKENDS): matrices made in the
// backend's memory, copies of host views there (contiguous and strided) and back, copies within it, resident(),
// synchronize(); what the tests of every algorithm rely on to place their data. CUDA only: failures of the runtime
// throw rsq::cuda_error with the library, the status and what was asked (an allocation that does not fit names the
// bytes), and are not sticky.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xmanipulation.hpp>

#include <rsq/backend/memory.hpp>
#include <rsq/backend/transfer.hpp>
#include <rsq/core/tensor.hpp>

#include "support/backend_data.hpp"
#include "support/backends.hpp"

namespace {

using rsq::index_t;

rsq::matrix<double> counting(index_t rows, index_t cols) {
  auto m = rsq::make_matrix<double>(rows, cols);
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) m(r, c) = double(100 * r + c) + 0.25;
  return m;
}

}  // namespace

TEST_SUITE("backend.memory") {
  TEST_CASE_TEMPLATE("host views go to the backend's memory and come back unchanged", B, RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    auto const h = counting(7, 13);
    auto const d = rsq::backend::to_backend(be, rsq::matrix_view<const double>(rsq::view(h)));
    CHECK(rsq::view(d).rows() == 7);
    CHECK(rsq::view(d).cols() == 13);
    CHECK(rsq::backend::resident(be, rsq::view(d).data()));
    CHECK(rsq::backend::to_host(be, rsq::view(d)) == h);
    // A strided host view (a transposed matrix) arrives row-major.
    rsq::matrix<double> const t = xt::transpose(h);  // (13, 7)
    rsq::matrix_view<const double> strided(t.data(), {7, 13}, {1, 7});
    auto const ds = rsq::backend::to_backend(be, strided);
    CHECK(rsq::backend::to_host(be, rsq::view(ds)) == h);
    // Copies within the backend's memory and between it and the host.
    auto m = rsq::backend::make_matrix<double>(be, 7, 13);
    rsq::backend::copy(be, rsq::view(m).data(), rsq::view(d).data(), index_t(91));
    rsq::backend::synchronize(be);
    CHECK(rsq::backend::to_host(be, rsq::view(m)) == h);
    std::vector<double> row(13);
    rsq::backend::copy(be, row.data(), rsq::view(m).data() + 3 * 13, index_t(13));
    for (index_t c = 0; c < 13; ++c) CHECK(row[std::size_t(c)] == h(3, c));
    // rsq_test::upload / download keep any rank.
    auto x = xt::xtensor<float, 3>::from_shape({2, 3, 5});
    for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = float(i) - 7.5f;
    auto const xd = rsq_test::upload(be, x);
    CHECK(xd.view().extent(0) == 2);
    CHECK(xd.view().extent(2) == 5);
    CHECK(rsq_test::download(be, xd.view()) == x);
    CHECK_THROWS_WITH_AS((void)rsq::backend::to_host(be, strided), doctest::Contains("contiguous"),
                         rsq::invalid_argument);
  }

  TEST_CASE_TEMPLATE("the download queue lands every push in host memory, in order, once the sources are gone", B,
                     RSQ_TEST_BACKENDS) {
    RSQ_NEED_DEVICE(B);
    B const be{};
    // 1 MiB of staging (the least the CUDA queue takes) in pieces of 256 KiB: pushes of 0.1 to 0.9 MiB wrap the ring
    // and wait for the worker, and each source is overwritten and freed as soon as its push returns.
    rsq::backend::download_queue<B> queue(be, std::size_t(1) << 20);
    std::vector<std::vector<float>> host;
    for (index_t k = 0; k < 24; ++k) {
      index_t const n = 25'000 + 37'000 * (k % 7);
      auto src = rsq::make_matrix_for_overwrite<float>(1, n);
      for (index_t i = 0; i < n; ++i) src(0, i) = float(k) * 1e6f + float(i);
      auto d = rsq::backend::to_backend(be, rsq::matrix_view<const float>(rsq::view(src)));
      host.emplace_back(std::size_t(n), -1.0f);
      queue.push(host.back().data(), rsq::view(d).data(), n);
      if constexpr (std::is_same_v<B, rsq::backend::cpu_eigen>) {
        // On the CPU the copy is done when push returns (and the queue writes nothing later).
        CHECK(host.back()[std::size_t(n - 1)] == float(k) * 1e6f + float(n - 1));
      }
      auto const scratch = rsq::view(d);
      std::vector<float> const junk(std::size_t(n), 7.0f);
      rsq::backend::copy(be, scratch.data(), junk.data(), n);  // the source changes: the copy must not see it
    }
    queue.wait();
    for (std::size_t k = 0; k < host.size(); ++k) {
      CAPTURE(k);
      bool same = true;
      for (std::size_t i = 0; i < host[k].size(); ++i) same = same && host[k][i] == float(k) * 1e6f + float(i);
      CHECK(same);
    }
    queue.push(host[0].data(), host[1].data(), index_t(10));  // host to host is a plain copy
    queue.wait();
    CHECK(host[0][9] == 1e6f + 9.0f);
  }
}

#if defined(RSQ_WITH_CUDA) && RSQ_WITH_CUDA
TEST_SUITE("backend.memory.cuda") {
  TEST_CASE("CUDA failures throw cuda_error naming what failed, and are not sticky") {
    RSQ_NEED_DEVICE(rsq::backend::cuda);
    rsq::backend::cuda const be{};
    CHECK_FALSE(rsq::backend::resident(be, counting(2, 2).data()));
    try {
      rsq::cuda::device_array<float> huge(index_t(1) << 48);  // 1 PiB
      FAIL("allocation of 1 PiB succeeded");
    } catch (rsq::cuda_error const& e) {
      std::string const what = e.what();
      INFO(what);
      CHECK(what.find("cannot hold 1125899906842624 more bytes") != std::string::npos);
      CHECK(what.find("MiB free") != std::string::npos);
      CHECK(e.origin() == rsq::cuda_error::source::runtime);
      CHECK(e.code() == 2);  // cudaErrorMemoryAllocation
    }
    // The error is not sticky: the next call works.
    rsq::cuda::device_array<float> small(16);
    CHECK(small.size() == 16);
    // A copy to a null pointer: the runtime rejects it, and the message names the call.
    try {
      rsq::backend::copy(be, static_cast<float*>(nullptr), small.data(), index_t(16));
      FAIL("a copy to nullptr succeeded");
    } catch (rsq::cuda_error const& e) {
      std::string const what = e.what();
      INFO(what);
      CHECK(what.find("cudaMemcpyAsync") != std::string::npos);
      CHECK(e.origin() == rsq::cuda_error::source::runtime);
    }
    std::vector<float> back(16, -1.0f);
    rsq::backend::copy(be, back.data(), small.data(), index_t(16));  // and the stream still works
  }
}
#endif
