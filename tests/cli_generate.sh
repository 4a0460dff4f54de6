#!/usr/bin/env bash
# cli_generate.sh — the CLI contract: info, tokenize, generate (PNG with A1111 infotext that parses back),
# pnginfo, and a one-line error with exit status 1 for every bad input. Args: KILN_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib_cli.sh" "$@"

# info and tokenize
"$kiln" info "$fx/model.safetensors" >"$tmp/info" && grep -q "family: SD1.x" "$tmp/info" &&
  grep -q "channels 32, mult \[1, 2, 4, 4\]" "$tmp/info" && ok info || bad info
[ "$("$kiln" tokenize "a photo of a cat")" = "[49406, 320, 1125, 539, 320, 2368, 49407]" ] && ok tokenize || bad tokenize
[ "$("$kiln" tokenize -m "$fx/model.safetensors" "a photo of a cat")" = "[49406, 320, 1125, 539, 320, 2368, 49407]" ] &&
  ok tokenize_model || bad tokenize_model

# generate the euler_a_8 fixture case and read its infotext back
start=$(date +%s%N)
"$kiln" generate -m "$fx/model.safetensors" -p "a photo of a cat" -n "blurry, lowres" --seed 42 --sampler "Euler a" \
  --steps 8 --cfg-scale 7 -W 64 -H 64 --rng nv -o "$tmp/cat.png" -q >"$tmp/gen.out" 2>"$tmp/gen.err"
rc=$?
end=$(date +%s%N)
echo "     generate took $(( (end - start) / 1000000 )) ms (model load, 8 steps, VAE decode, PNG)"
[ $rc -eq 0 ] && [ -s "$tmp/cat.png" ] && [ "$(cat "$tmp/gen.out")" = "$tmp/cat.png" ] && ok generate ||
  bad "generate ($(cat "$tmp/gen.err"))"
"$kiln" pnginfo "$tmp/cat.png" >"$tmp/info.json" && grep -q '"Seed": "42"' "$tmp/info.json" &&
  grep -q '"Sampler": "Euler a"' "$tmp/info.json" && grep -q '"negative_prompt": "blurry, lowres"' "$tmp/info.json" &&
  grep -q '"Size-1": "64"' "$tmp/info.json" && grep -q '"Model hash": "bbae4dee6a"' "$tmp/info.json" &&
  ok pnginfo_roundtrip || bad pnginfo_roundtrip
# batch: two files with -N suffixes and consecutive seeds
"$kiln" generate -m "$fx/model.safetensors" -p "a cat" --seed 7 --steps 2 -W 64 -H 64 --batch-size 2 -o "$tmp/b.png" -q \
  >/dev/null 2>&1 && "$kiln" pnginfo "$tmp/b-2.png" | grep -q '"Seed": "8"' && ok batch_seeds || bad batch_seeds

# bad input: one line, exit 1, nothing overwritten
expect_error unknown_sampler "Euler a" "$kiln" generate -m "$fx/model.safetensors" -p x --sampler "Euler b" -W 64 -H 64
expect_error width_multiple_of_8 "width" "$kiln" generate -m "$fx/model.safetensors" -p x -W 60 -H 64
expect_error steps_zero "steps" "$kiln" generate -m "$fx/model.safetensors" -p x --steps 0
expect_error bad_number "cfg-scale" "$kiln" generate -m "$fx/model.safetensors" -p x --cfg-scale abc
expect_error missing_model "nope.safetensors" "$kiln" generate -m "$tmp/nope.safetensors" -p x
expect_error bad_utf8 "UTF-8" "$kiln" generate -m "$fx/model.safetensors" -p $'a \xff cat' -W 64 -H 64 --steps 1 -o "$tmp/u.png"
head -c 1000 "$fx/model.safetensors" >"$tmp/trunc.safetensors"
expect_error truncated_model "trunc.safetensors" "$kiln" info "$tmp/trunc.safetensors"
expect_error no_output_dir "$tmp/missing/x.png" "$kiln" generate -m "$fx/model.safetensors" -p x -W 64 -H 64 --steps 1 -o "$tmp/missing/x.png"
echo keep >"$tmp/keep.png"
expect_error bad_option "unknown option" "$kiln" generate -m "$fx/model.safetensors" -p x --frobnicate 1 -o "$tmp/keep.png"
[ "$(cat "$tmp/keep.png")" = keep ] && ok not_overwritten || bad not_overwritten
expect_error unknown_command "unknown command" "$kiln" frobnicate

finish
