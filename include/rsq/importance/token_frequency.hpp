// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Token-id counts over a calibration set, the raw score of TokenFreq (spec §4.4).

#include <concepts>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "rsq/core/error.hpp"
#include "rsq/core/view.hpp"

namespace rsq::importance {

/// How often each token id occurs in the calibration set. Build it once from all calibration sequences (after any
/// dataset expansion, §8.2: expansion multiplies every count by the same factor, which min-max scaling removes).
class token_frequency {
 public:
  token_frequency() = default;

  /// Counts the ids of one sequence. Ids must be >= 0.
  template <class I>
    requires std::integral<std::remove_const_t<I>>
  void add(vector_view<I> ids) {
    for (index_t t = 0; t < ids.extent(0); ++t) add_one(std::int64_t(ids(t)), t);
  }

  /// Counts the ids of a batch of sequences // (sequences, tokens)
  template <class I>
    requires std::integral<std::remove_const_t<I>>
  void add(matrix_view<I> ids) {
    for (index_t j = 0; j < ids.rows(); ++j) add(ids[j]);
  }

  /// Builds a table from a batch of sequences // (sequences, tokens)
  template <class I>
    requires std::integral<std::remove_const_t<I>>
  [[nodiscard]] static token_frequency from_sequences(matrix_view<I> ids) {
    token_frequency f;
    f.add(ids);
    return f;
  }

  /// Occurrences of @p id; 0 for an id never seen (and for negative ids).
  [[nodiscard]] std::int64_t count(std::int64_t id) const noexcept {
    return id >= 0 && std::size_t(id) < counts_.size() ? counts_[std::size_t(id)] : 0;
  }

  /// Number of tokens counted.
  [[nodiscard]] std::int64_t total() const noexcept { return total_; }

  /// One past the largest id seen (0 when empty).
  [[nodiscard]] std::int64_t id_bound() const noexcept { return std::int64_t(counts_.size()); }

 private:
  void add_one(std::int64_t id, index_t where) {
    RSQ_EXPECTS(id >= 0, "token_frequency: token ids must be >= 0, got ", id, " at index ", where);
    if (std::size_t(id) >= counts_.size()) counts_.resize(std::size_t(id) + 1, 0);
    ++counts_[std::size_t(id)];
    ++total_;
  }

  std::vector<std::int64_t> counts_;  // (vocabulary): dense, vocabularies are at most a few 100k ids
  std::int64_t total_ = 0;
};

}  // namespace rsq::importance
