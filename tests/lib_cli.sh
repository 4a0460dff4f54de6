# lib_cli.sh — shared by the CLI test scripts (tests/cli_*.sh), which source it with their arguments
# KILN_BINARY FIXTURES_DIR: sets $kiln, $fx (tiny-sd15), $tmp (removed on exit), the vocabulary and one OpenMP
# thread, and gives ok/bad counters, expect_error and finish (the "N passed, N failed" line and the status).
set -u
kiln=$1
fx=$2/tiny-sd15
export OMP_NUM_THREADS=1
export KILN_CLIP_VOCAB="$(dirname "${BASH_SOURCE[0]}")/../data/bpe_simple_vocab_16e6.txt.gz"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); echo "ok   $1"; }
bad() { fails=$((fails + 1)); echo "FAIL $1"; }
# expect_error NAME PATTERN CMD...: exit status 1, one line on stderr containing PATTERN
expect_error() {
  local name=$1 pattern=$2; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  if [ $rc -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q -- "$pattern" "$tmp/err"; then ok "$name"
  else bad "$name (rc=$rc, stderr: $(cat "$tmp/err"))"; fi
}
finish() {
  echo "$passes passed, $fails failed"
  [ $fails -eq 0 ]
}
