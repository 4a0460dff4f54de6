#!/usr/bin/env bash
# gpu-check.sh — runs the CUDA backend's tests and kernel benchmark on a machine with a GPU and
# prints a short table last.
#
# Binaries come from (first found): $KILN_GPU_BIN, .gpu/ (carried from a build machine: copy
# build-gpu/test_cuda_* and build-gpu/cuda_bench there, extra shared libraries into .gpu/lib, and
# ../shared/fixtures/tiny-sd15/{model,unet,vae,text_encoder}.safetensors into .gpu/fixtures/tiny-sd15
# for test_cuda_nets), or a fresh CUDA build into build-gpu/. Logs go to $OUT (or /tmp/kiln-gpu-check).
# Usage: scripts/gpu-check.sh [bench-filter]
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-/tmp/kiln-gpu-check}
mkdir -p "$out"
bin=${KILN_GPU_BIN:-}
if [ -z "$bin" ]; then
  if [ -x .gpu/test_cuda_ops ]; then
    bin=.gpu
  else
    if [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi
    cmake -S . -B build-gpu -DKILN_CUDA=ON -DKILN_SERVER=OFF -DCMAKE_BUILD_TYPE=Release >"$out/build.log" 2>&1 &&
      cmake --build build-gpu -j"$(nproc)" >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
    bin=build-gpu
  fi
fi
[ -d "$bin/lib" ] && export LD_LIBRARY_PATH="$bin/lib:${LD_LIBRARY_PATH:-}"
# golden-net fixtures carried with the binaries (tiny-sd15/*.safetensors), unless given
[ -z "${KILN_FIXTURES:-}" ] && [ -d "$bin/fixtures" ] && export KILN_FIXTURES="$PWD/$bin/fixtures"

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "GPU: ${gpu:-none found}" | tee "$out/gpu.txt"

status=0
results=""
for t in "$bin"/test_cuda_*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  start=$SECONDS
  KILN_TEST_VERBOSE=1 "$t" >"$out/$name.log" 2>&1
  rc=$?
  secs=$((SECONDS - start))
  summary=$(grep -E "passed, .* failed" "$out/$name.log" | tail -1)
  case $rc in
    0) verdict=PASS ;;
    77) verdict=SKIP ;;
    *) verdict=FAIL; status=1 ;;
  esac
  results="$results$(printf '%-22s %-5s %-24s %ss' "$name" "$verdict" "$summary" "$secs")\n"
  [ $rc -ne 0 ] && [ $rc -ne 77 ] && { echo "--- $name failures:"; grep -E "FAIL|CHECK" "$out/$name.log" | head -40; }
done

if [ -x "$bin/cuda_bench" ]; then
  KILN_BENCH_DESCRIBE=${KILN_BENCH_DESCRIBE:-} "$bin/cuda_bench" "${1:-}" >"$out/bench.log" 2>&1 || status=1
fi

echo
echo "== CUDA tests =="
printf "%b" "$results"
if [ -f "$out/bench.log" ]; then
  echo "== CUDA kernel benchmark (SD 1.5, 512x512, CFG batch 2) =="
  grep -E "^(case|conv|linear|attn|group|layer|device)" "$out/bench.log" | grep -v "^op "
fi
exit $status
