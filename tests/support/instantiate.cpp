// SPDX-License-Identifier: MIT
// The one translation unit of each test program that holds rsq's heaviest instantiations (tests are built with
// RSQ_EXTERN_TEMPLATES): the CPU solver and the model pipeline compile once instead of once per test file.
#include <rsq/instantiate.hpp>
