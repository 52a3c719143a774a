#!/usr/bin/env bash
# Installs what rsq needs, builds its tools and runs the main job on its built-in default: the real model
# (stories260K from ../shared/data/models, or $RSQ_SHARED_DIR) quantized to 3 bits with RTN, GPTQ, QuaRot and RSQ,
# with the perplexity of each next to FP32. Without the model it says where to get it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j "$(nproc)" --target rsq-llama2c rsq-quantize-layer
./build/release/examples/rsq-llama2c --compare --bits 3
