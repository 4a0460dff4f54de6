/* net.h — network builders: each emits a plan for given shapes from a model config and weight store.
 *
 * Builders know the networks' structure and the checkpoint's weight names, never kernels.
 * Every plan reads its weights by canonical (LDM) name; a missing or mis-shaped tensor fails the
 * build with a message naming it. Input and output slot names are listed per builder. */
#ifndef KILN_NET_NET_H
#define KILN_NET_NET_H

#include "model/model_config.h"
#include "plan/plan.h"

/* CLIP text encoder.
 * input  "embeds"  [batch, n_tokens, hidden]: token embeddings (the token_embedding rows, with
 *                  textual-inversion vectors already substituted), positions not yet added
 * output "hidden"  [batch, n_tokens, hidden]: final_layer_norm(hidden state after layer (layers - clip_skip + 1))
 * clip_skip 1 = the last layer (A1111 "Clip skip"). */
int kiln_build_clip(kiln_plan *p, const kiln_clip_config *c, int batch, int n_tokens, int clip_skip);

/* Token embedding rows of ids[0..n) as float32 into out [n, hidden] (the CLIP plan's "embeds" input). */
int kiln_clip_embed_tokens(const kiln_weights *w, const kiln_clip_config *c, const int32_t *ids, int n, float *out);

/* U-Net noise predictor (LDM names under "model.diffusion_model.").
 * inputs "x" [batch, in_channels, h, w] (already scaled by c_in), "t" [batch] (fractional timesteps),
 *        "context" [batch, ctx_len, context_dim]
 * output "out" [batch, out_channels, h, w] */
int kiln_build_unet(kiln_plan *p, const kiln_unet_config *c, int batch, int h, int w, int ctx_len);

/* VAE decoder: input "latent" [batch, z, h, w] (as sampled, unscaled), output "image" [batch, 3, 8h, 8w]
 * (about [-1, 1], not clamped). The 1/scaling_factor multiply is part of the plan. */
int kiln_build_vae_decoder(kiln_plan *p, const kiln_vae_config *c, int batch, int h, int w);

/* VAE encoder: input "image" [batch, 3, H, W] in [-1, 1]; outputs "mean" and "logvar" [batch, z, H/8, W/8]
 * (logvar not yet clamped; the caller clamps to [-30, 20] as LDM does). */
int kiln_build_vae_encoder(kiln_plan *p, const kiln_vae_config *c, int batch, int h, int w);

/* ---- shared pieces (net_util.c) ---- */
/* Weight slot named prefix+suffix with the given shape (unused trailing dims ignored). */
int kiln_net_weight(kiln_plan *p, const char *prefix, const char *suffix, int ndim, int64_t d0, int64_t d1,
                    int64_t d2, int64_t d3);
/* y = x W^T + b for "<prefix>.weight" [out, in] and optional "<prefix>.bias". */
int kiln_net_linear(kiln_plan *p, int x, const char *prefix, int64_t in, int64_t out, int has_bias);
/* Conv with "<prefix>.weight" [out, in, k, k] and "<prefix>.bias". */
int kiln_net_conv(kiln_plan *p, int x, const char *prefix, int64_t in, int64_t out, int k, int stride, int pad);
int kiln_net_group_norm(kiln_plan *p, int x, const char *prefix, int64_t channels, int groups, float eps,
                        kiln_activation act);
int kiln_net_layer_norm(kiln_plan *p, int x, const char *prefix, int64_t channels, float eps);
/* Number of channels (dim 1) of a slot. */
int64_t kiln_net_channels(const kiln_plan *p, int slot);

#endif
