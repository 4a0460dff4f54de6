/* clip.c — the CLIP text encoder (HF CLIPTextModel names under the config's prefix). */
#include <math.h>
#include <stdio.h>

#include "core/error.h"
#include "net/net.h"

/* One pre-norm encoder layer: x + attn(ln1(x)), then x + mlp(ln2(x)). x: [B, L, H] */
static int encoder_layer(kiln_plan *p, const kiln_clip_config *c, int x, int i) {
    char pre[256], name[320];
    snprintf(pre, sizeof pre, "%sencoder.layers.%d.", c->prefix, i);
    kiln_plan_set_label(p, "%sencoder.layers.%d", c->prefix, i);
    const int64_t H = c->hidden;

    snprintf(name, sizeof name, "%slayer_norm1", pre);
    int h = kiln_net_layer_norm(p, x, name, H, c->eps);
    snprintf(name, sizeof name, "%sself_attn.q_proj", pre);
    int q = kiln_net_linear(p, h, name, H, H, 1);
    snprintf(name, sizeof name, "%sself_attn.k_proj", pre);
    int k = kiln_net_linear(p, h, name, H, H, 1);
    snprintf(name, sizeof name, "%sself_attn.v_proj", pre);
    int v = kiln_net_linear(p, h, name, H, H, 1);
    int a = kiln_plan_attention(p, q, k, v, c->heads, 1);          /* causal */
    snprintf(name, sizeof name, "%sself_attn.out_proj", pre);
    x = kiln_plan_add(p, x, kiln_net_linear(p, a, name, H, H, 1)); /* [B, L, H] */

    snprintf(name, sizeof name, "%slayer_norm2", pre);
    h = kiln_net_layer_norm(p, x, name, H, c->eps);
    snprintf(name, sizeof name, "%smlp.fc1", pre);
    h = kiln_net_linear(p, h, name, H, c->mlp, 1);                 /* [B, L, mlp] */
    h = kiln_plan_activation(p, h, c->act == KILN_CLIP_QUICK_GELU ? KILN_ACT_QUICK_GELU : KILN_ACT_GELU);
    snprintf(name, sizeof name, "%smlp.fc2", pre);
    return kiln_plan_add(p, x, kiln_net_linear(p, h, name, c->mlp, H, 1));
}

int kiln_build_clip(kiln_plan *p, const kiln_clip_config *c, int batch, int n_tokens, int clip_skip) {
    if (clip_skip < 1) clip_skip = 1;
    int n_layers = c->layers - (clip_skip - 1);
    if (n_layers < 1) n_layers = 1;
    const int64_t H = c->hidden;
    const int64_t shape[3] = {batch, n_tokens, H};
    int x = kiln_plan_input(p, "embeds", KILN_SLOT_F32, 3, shape);
    kiln_plan_set_label(p, "%sembeddings", c->prefix);
    int pos = kiln_net_weight(p, c->prefix, "embeddings.position_embedding.weight", 2, c->max_positions, H, 0, 0);
    x = kiln_plan_add(p, x, pos); /* n_tokens == max_positions: positions 0..76 */
    for (int i = 0; i < n_layers; i++) x = encoder_layer(p, c, x, i);
    char name[256];
    snprintf(name, sizeof name, "%sfinal_layer_norm", c->prefix);
    kiln_plan_set_label(p, "%s", name);
    x = kiln_net_layer_norm(p, x, name, H, c->eps);
    kiln_plan_output(p, x, "hidden");
    return kiln_plan_finalize(p);
}

int kiln_clip_embed_tokens(const kiln_weights *w, const kiln_clip_config *c, const int32_t *ids, int n, float *out) {
    char name[256];
    snprintf(name, sizeof name, "%sembeddings.token_embedding.weight", c->prefix);
    const kiln_weight *t = kiln_weights_find(w, name);
    if (!t) return kiln_error(KILN_ENOTFOUND, "tensor %s not found", name);
    const size_t row = kiln_dtype_size(t->dtype) * (size_t)c->hidden;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return kiln_error(KILN_EINVAL, "token id %d is outside the vocabulary (0..%d)", ids[i], c->vocab_size - 1);
        kiln_weight one = *t;
        one.ndim = 1;
        one.shape[0] = c->hidden;
        one.data = (const uint8_t *)t->data + row * (size_t)ids[i];
        kiln_weight_to_f32(&one, out + (size_t)i * c->hidden);
    }
    return KILN_OK;
}
