// SPDX-License-Identifier: MIT
// The doctest main shared by all test executables.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
