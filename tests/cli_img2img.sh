#!/usr/bin/env bash
# cli_img2img.sh — the CLI's img2img / inpainting / hires-fix flags: the fixture runs through `kiln generate`
# (infotext keys, output size) and a one-line error with exit status 1 for every bad input.
# Args: KILN_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib_cli.sh" "$@"
# png_size FILE: "WxH" from the IHDR chunk
png_size() { echo "$(od -An -tu1 -j16 -N8 "$1" | awk '{print $3*256+$4 "x" $7*256+$8}')"; }
m="$fx/model.safetensors"

# img2img (size from the init image), inpainting, hires fix
"$kiln" generate -m "$m" -p "a colorful abstract painting" --seed 5555 --sampler "Euler a" --steps 10 --rng nv \
  --init-image "$fx/vae_encode_input.png" --denoising-strength 0.6 -o "$tmp/i2i.png" -q >/dev/null 2>"$tmp/e" &&
  [ "$(png_size "$tmp/i2i.png")" = 64x64 ] && "$kiln" pnginfo "$tmp/i2i.png" | grep -q '"Denoising strength": "0.6"' &&
  ok img2img || bad "img2img ($(cat "$tmp/e"))"
"$kiln" generate -m "$m" -p "a bright yellow flower" --seed 2468 --sampler "Euler a" --steps 10 --rng nv \
  --init-image "$fx/vae_encode_input.png" --mask "$fx/inpaint_euler_a_10_mask.png" -o "$tmp/inp.png" -q >/dev/null 2>"$tmp/e" &&
  "$kiln" pnginfo "$tmp/inp.png" >"$tmp/inp.json" && grep -q '"Mask blur": "4"' "$tmp/inp.json" &&
  grep -q '"Denoising strength": "0.75"' "$tmp/inp.json" && ok inpaint || bad "inpaint ($(cat "$tmp/e"))"
"$kiln" generate -m "$m" -p "a red fox in a snowy forest" --seed 7777 --sampler "Euler a" --steps 6 -W 64 -H 64 --rng nv \
  --hr-scale 2 --hr-steps 5 --denoising-strength 0.55 -o "$tmp/hr.png" -q >/dev/null 2>"$tmp/e" &&
  [ "$(png_size "$tmp/hr.png")" = 128x128 ] && "$kiln" pnginfo "$tmp/hr.png" >"$tmp/hr.json" &&
  grep -q '"Hires upscale": "2"' "$tmp/hr.json" && grep -q '"Hires upscaler": "Latent"' "$tmp/hr.json" &&
  grep -q '"Size-1": "64"' "$tmp/hr.json" && ok hires || bad "hires ($(cat "$tmp/e"))"
"$kiln" generate -m "$m" -p "a flower" --seed 1 --steps 3 --init-image "$fx/vae_encode_input.png" \
  --mask "$fx/inpaint_euler_a_10_mask.png" --inpaint-full-res 1 --inpaint-full-res-padding 8 -o "$tmp/om.png" -q \
  >/dev/null 2>"$tmp/e" && [ "$(png_size "$tmp/om.png")" = 64x64 ] &&
  "$kiln" pnginfo "$tmp/om.png" | grep -q '"Inpaint area": "Only masked"' && ok only_masked || bad "only_masked ($(cat "$tmp/e"))"

# bad input
expect_error missing_init "nope.png" "$kiln" generate -m "$m" -p x --init-image "$tmp/nope.png"
expect_error mask_size "must match" "$kiln" generate -m "$m" -p x --init-image "$fx/vae_encode_input.png" \
  --mask "$fx/hires_latent_euler_a_6.png"
expect_error mask_without_init "init-image" "$kiln" generate -m "$m" -p x --mask "$fx/inpaint_euler_a_10_mask.png"
expect_error bad_strength "denoising-strength" "$kiln" generate -m "$m" -p x --denoising-strength 1.5
expect_error bad_resize_mode "resize-mode" "$kiln" generate -m "$m" -p x --resize-mode 4
expect_error bad_hr_scale "hr-scale" "$kiln" generate -m "$m" -p x --hr-scale abc
expect_error unknown_upscaler "hr_upscaler" "$kiln" generate -m "$m" -p x -W 64 -H 64 --hr-scale 2 --hr-upscaler "R-ESRGAN 4x+"
expect_error bad_fill "inpainting-fill" "$kiln" generate -m "$m" -p x --init-image "$fx/vae_encode_input.png" \
  --mask "$fx/inpaint_euler_a_10_mask.png" --inpainting-fill 4
expect_error bad_full_res "inpaint-full-res" "$kiln" generate -m "$m" -p x --inpaint-full-res 2
expect_error hires_with_init "hr_scale" "$kiln" generate -m "$m" -p x --init-image "$fx/vae_encode_input.png" --hr-scale 2

finish
