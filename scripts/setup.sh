#!/usr/bin/env bash
# setup.sh — installs kiln's Debian build dependencies (as root, or with sudo) and builds kiln
# into ./build, with the CUDA backend when nvcc is found. Also installs the CLIP vocabulary
# where kiln looks by default. Usage: ./scripts/setup.sh [extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."

packages="build-essential cmake pkg-config python3 libjansson-dev libutf8proc-dev libopenblas-dev
          libpng-dev libjpeg-dev libwebp-dev libssl-dev zlib1g-dev libmicrohttpd-dev"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends $missing
fi

# nvcc lives outside PATH on most machines; CMake finds it through CUDACXX.
if [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j"$(nproc)"

# The CLIP BPE vocabulary: installed into the user's data directory, where kiln looks by default.
vocab_src=""
for f in data/bpe_simple_vocab_16e6.txt.gz ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz; do
  [ -f "$f" ] && { vocab_src="$f"; break; }
done
if [ -n "$vocab_src" ]; then
  dest="${XDG_DATA_HOME:-$HOME/.local/share}/kiln"
  mkdir -p "$dest" && cp "$vocab_src" "$dest/bpe_simple_vocab_16e6.txt.gz"
  echo "CLIP vocabulary installed in $dest"
fi
echo "built: build/kiln"
