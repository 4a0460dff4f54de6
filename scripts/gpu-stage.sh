#!/usr/bin/env bash
# gpu-stage.sh — on the build machine: builds the CUDA backend (static Debian libraries, no server) and copies the
# binaries and the tiny-sd15 fixture files the GPU tests read into .gpu/ (git-ignored, under the device tool's
# 64 MiB limit), so that `bash scripts/gpu-check.sh` can run on a GPU machine that has no build dependencies.
# Usage: scripts/gpu-stage.sh [FIXTURES_DIR]   (default ../shared/fixtures)
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures=${1:-../shared/fixtures}
export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
cmake -S . -B build-gpu -DKILN_CUDA=ON -DKILN_STATIC_DEPS=ON -DKILN_SERVER=OFF -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-gpu -j2 >/dev/null
mkdir -p .gpu/fixtures/tiny-sd15
rm -f .gpu/kiln .gpu/test_cuda_* .gpu/cuda_*  # binaries travel gzipped (the carry limit); gpu-check unpacks them
for b in kiln test_cuda_ops test_cuda_nets test_cuda_pipeline cuda_bench cuda_unet_bench; do
  strip -o .gpu/$b build-gpu/$b && gzip -f .gpu/$b
done
for f in model.safetensors manifest.json text_encoder.safetensors unet.safetensors vae.safetensors \
  "$fixtures"/tiny-sd15/txt2img_*.safetensors "$fixtures"/tiny-sd15/img2img_*.safetensors; do
  f=$(basename "$f")
  [ -f .gpu/fixtures/tiny-sd15/$f ] || cp "$fixtures/tiny-sd15/$f" .gpu/fixtures/tiny-sd15/
done
mkdir -p .gpu/fixtures/tiny-sd15/lora
cp -n "$fixtures"/tiny-sd15/lora/tiny_lora.safetensors .gpu/fixtures/tiny-sd15/lora/ 2>/dev/null || true
git rev-parse --short HEAD >.gpu/COMMIT
du -sh .gpu
