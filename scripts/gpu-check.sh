#!/usr/bin/env bash
# gpu-check.sh — on a machine with an NVIDIA GPU: runs the CUDA tests, the kernel benchmark, a full-size SD 1.5
# U-Net check against the CPU backend at 256x256, and `kiln bench` on a random-weight SD 1.5 checkpoint
# (kiln mkrandom) at 512x512, 768x768, 1024x1024 and batch 4; prints a short table last.
#
# Binaries come from (first found): $KILN_GPU_BIN, .gpu/ (carried from a build machine: build there with
#   CUDACXX=/usr/local/cuda/bin/nvcc cmake -S . -B build-gpu -DKILN_CUDA=ON -DKILN_STATIC_DEPS=ON -DKILN_SERVER=OFF
# and copy build-gpu/{kiln,test_cuda_*,cuda_bench,cuda_unet_bench} plus fixtures/tiny-sd15 into .gpu/), or a fresh
# CUDA build into build-gpu/. Logs go to $OUT (or /tmp/kiln-gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/kiln-gpu-check}
mkdir -p "$out"
bin=${KILN_GPU_BIN:-}
for z in .gpu/*.gz; do [ -f "$z" ] && gunzip -f "$z" && chmod +x "${z%.gz}"; done  # packed by gpu-stage.sh
if [ -z "$bin" ]; then
  if [ -x .gpu/kiln ]; then
    bin=.gpu
  else
    if [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi
    cmake -S . -B build-gpu -DKILN_CUDA=ON -DKILN_SERVER=OFF -DCMAKE_BUILD_TYPE=Release >"$out/build.log" 2>&1 &&
      cmake --build build-gpu -j"$(nproc)" >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
    bin=build-gpu
  fi
fi
[ -d "$bin/lib" ] && export LD_LIBRARY_PATH="$bin/lib:${LD_LIBRARY_PATH:-}"
[ -d "$bin/fixtures" ] && export KILN_FIXTURES="$bin/fixtures"
export KILN_CLIP_VOCAB=${KILN_CLIP_VOCAB:-data/bpe_simple_vocab_16e6.txt.gz}

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
commit=$(cat "$bin/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "GPU: ${gpu:-none found}; commit $commit" | tee "$out/gpu.txt"

status=0
results=""
for t in "$bin"/test_cuda_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  "$t" >"$out/$name.log" 2>&1
  rc=$?
  summary=$(grep -E "passed, .* failed" "$out/$name.log" | tail -1)
  case $rc in 0) verdict=PASS ;; 77) verdict=SKIP ;; *) verdict=FAIL; status=1 ;; esac
  results="$results$(printf '%-22s %-5s %s' "$name" "$verdict" "$summary")\n"
  [ $rc -ne 0 ] && [ $rc -ne 77 ] && { echo "--- $name:"; tail -30 "$out/$name.log"; }
done
cat "$out"/test_cuda_pipeline.log 2>/dev/null | grep PSNR

# full-size SD 1.5 U-Net (random weights) against the CPU backend at 256x256
if [ -x "$bin/cuda_unet_bench" ]; then
  "$bin/cuda_unet_bench" --size 256 --iters 10 --check >"$out/unet_check_256.log" 2>&1 || status=1
  "$bin/cuda_unet_bench" --describe >"$out/unet_bench_512.log" 2>&1 || status=1
fi
[ -x "$bin/cuda_bench" ] && { "$bin/cuda_bench" >"$out/kernels.log" 2>&1 || status=1; }
# GroupNorm in its three-kernel form (GPUs before sm_90, large maps), for comparison
[ -x "$bin/cuda_bench" ] && KILN_CUDA_GN_CLUSTER=-1 "$bin/cuda_bench" groupnorm >"$out/kernels_gn_split.log" 2>&1

# kiln bench on a random SD 1.5 checkpoint
model=${KILN_BENCH_MODEL:-/tmp/kiln-sd15-random.safetensors}
[ -f "$model" ] || "$bin/kiln" mkrandom --arch sd15 --seed 1 -o "$model" || status=1
bench() { # name, args...
  local name=$1; shift
  "$bin/kiln" bench -m "$model" --backend cuda --peak-tflops 762 "$@" >"$out/bench_$name.log" 2>&1 || status=1
}
bench 512 -W 512 -H 512 --batch-size 1 --steps 20 --profile
bench 512bf16 -W 512 -H 512 --batch-size 1 --steps 20 --precision bf16
[ -n "${KILN_GPU_QUICK:-}" ] || {
bench 768 -W 768 -H 768 --batch-size 1 --steps 20
bench 1024 -W 1024 -H 1024 --batch-size 1 --steps 20
bench 512b4 -W 512 -H 512 --batch-size 4 --steps 20
}

# the CLI end to end on the GPU: the tiny fixture's euler_a_8 case
if [ -n "${KILN_FIXTURES:-}" ] && [ -f "$KILN_FIXTURES/tiny-sd15/model.safetensors" ]; then
  ( time "$bin/kiln" generate -m "$KILN_FIXTURES/tiny-sd15/model.safetensors" -p "a photo of a cat" -n "blurry, lowres" \
      --seed 42 --sampler "Euler a" --steps 8 -W 64 -H 64 --rng nv --backend cuda -o "$out/cat_cuda.png" -q ) \
    >"$out/generate_cuda.log" 2>&1 || status=1
fi

echo
echo "== CUDA tests =="
printf "%b" "$results"
echo "== kiln generate --backend cuda (tiny fixture, 8 steps): $(grep real "$out/generate_cuda.log" 2>/dev/null)"
echo "== full SD 1.5 U-Net vs CPU, 256x256 =="
grep -iE "rel|max|nan|check" "$out/unet_check_256.log" | tail -3
grep -E "^(GFLOP|op |conv2d|linear|attention|group_norm|layer_norm|geglu|total|graph| +graph)" "$out/bench_512.log"
echo "== kiln bench (SD 1.5 random weights, CFG 7, 20 steps Euler a) on ${gpu:-?} =="
printf '%-8s %-12s %-10s %-12s %-34s %-10s\n' config "unet ms" "it/s" "TFLOP/s" "txt2img ms (encode/sample/decode)" "kiln GiB"
for name in 512 512bf16 768 1024 512b4; do
  f="$out/bench_$name.log"
  [ -f "$f" ] || continue
  ms=$(sed -nE 's/.*, ([0-9.]+) ms GPU replay.*/\1/p' "$f")
  its=$(sed -nE 's/^unet rate +([0-9.]+) it\/s.*/\1/p' "$f")
  tf=$(sed -nE 's/.* ([0-9.]+) TFLOP\/s.*/\1/p' "$f")
  img=$(sed -nE 's/^txt2img +([0-9.]+) ms.*/\1/p' "$f")
  split=$(sed -nE 's/.*text encode ([0-9.]+) ms, sampling ([0-9.]+) ms, VAE decode ([0-9.]+) ms.*/\1\/\2\/\3/p' "$f")
  mem=$(sed -nE 's/^device memory .* ([0-9.]+) GiB kiln .*/\1/p' "$f")
  printf '%-8s %-12s %-10s %-12s %-34s %-10s\n' "$name" "${ms:-?}" "${its:-?}" "${tf:-?}" "${img:-?} ($split)" "${mem:-?}"
done
exit $status
