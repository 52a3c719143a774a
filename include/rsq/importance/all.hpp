// SPDX-License-Identifier: MIT
#pragma once

/// @file
/// Every token-importance header (spec §4): the policies, their normalisation, the run-time wrapper and the batch
/// helper.

#include "rsq/importance/actdiff.hpp"
#include "rsq/importance/actnorm.hpp"
#include "rsq/importance/attncon.hpp"
#include "rsq/importance/batch.hpp"
#include "rsq/importance/context.hpp"
#include "rsq/importance/first_n.hpp"
#include "rsq/importance/normalize.hpp"
#include "rsq/importance/policy.hpp"
#include "rsq/importance/token_frequency.hpp"
#include "rsq/importance/tokenfreq.hpp"
#include "rsq/importance/tokensim.hpp"
#include "rsq/importance/uniform.hpp"
