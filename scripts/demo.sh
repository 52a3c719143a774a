#!/usr/bin/env bash
# Installs what rsq needs, builds its tools and runs the main job on its built-in default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j "$(nproc)" --target rsq-quantize-layer
./build/release/examples/rsq-quantize-layer
