#!/usr/bin/env bash
# Installs the Debian packages rsq needs to build, test and run its tools. Safe to run again.
set -euo pipefail
packages=(cmake ninja-build g++ clang libomp-dev libeigen3-dev xtensor-dev doctest-dev nlohmann-json3-dev
          libpcre2-dev)
# Node.js and npm run the GGUF tests' llama.cpp (tests/llama_cpp); machines that have them keep theirs.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
