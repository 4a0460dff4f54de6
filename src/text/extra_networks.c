/* extra_networks.c — cutting A1111 <NAME:ARGS> extra-network tags out of a prompt and reading
 * <lora:...> arguments (see extra_networks.h). */
#include "text/extra_networks.h"

#include "core/error.h"
#include "text/pytext.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void params_free(kiln_extra_network_params *p) {
    free(p->type);
    for (int i = 0; i < p->n_items; i++) free(p->items[i]);
    free(p->items);
    free(p->positional);
    for (int i = 0; i < p->n_named; i++) {
        free(p->named_keys[i]);
        free(p->named_values[i]);
    }
    free(p->named_keys);
    free(p->named_values);
    memset(p, 0, sizeof *p);
}

/* ExtraNetworkParams(items=args.split(":")): items with exactly one '=' are named. */
static int params_fill(kiln_extra_network_params *p, const char *type, size_t type_len, const char *args,
                       size_t args_len) {
    int n = 1;
    for (size_t i = 0; i < args_len; i++) n += args[i] == ':';
    p->type = dup_n(type, type_len);
    p->items = calloc((size_t)n, sizeof(char *));
    p->positional = calloc((size_t)n, sizeof(char *));
    p->named_keys = calloc((size_t)n, sizeof(char *));
    p->named_values = calloc((size_t)n, sizeof(char *));
    if (!p->type || !p->items || !p->positional || !p->named_keys || !p->named_values) goto oom;
    size_t a = 0;
    for (int k = 0; k < n; k++) {
        size_t b = a;
        while (b < args_len && args[b] != ':') b++;
        char *item = dup_n(args + a, b - a);
        if (!item) goto oom;
        p->items[p->n_items++] = item;
        char *eq = strchr(item, '=');
        if (eq && !strchr(eq + 1, '=')) {
            p->named_keys[p->n_named] = dup_n(item, (size_t)(eq - item));
            p->named_values[p->n_named] = dup_n(eq + 1, strlen(eq + 1));
            if (!p->named_keys[p->n_named] || !p->named_values[p->n_named]) {
                p->n_named++;
                goto oom;
            }
            p->n_named++;
        } else {
            p->positional[p->n_positional++] = item;
        }
        a = b + 1;
    }
    return 0;
oom:
    params_free(p);
    return kiln_error(KILN_ENOMEM, "out of memory parsing extra-network tags");
}

/* re <(\w+):([^>]+)> at s[i] == '<': the end of the match, the NAME span and the ARGS span. */
static int match_tag(const char *s, size_t len, size_t i, size_t *name_end, size_t *end) {
    size_t j = i + 1;
    while (j < len) {
        int32_t cp;
        int n = kiln_py_utf8_next(s + j, len - j, &cp);
        if (n == 0 || !kiln_py_isword(cp)) break;
        j += (size_t)n;
    }
    if (j == i + 1 || j >= len || s[j] != ':') return 0;
    size_t k = j + 1;
    while (k < len && s[k] != '>') k++;
    if (k >= len || k == j + 1) return 0;
    *name_end = j;
    *end = k + 1;
    return 1;
}

int kiln_extra_networks_parse(const char *prompt, char **prompt_out, kiln_extra_networks *out) {
    memset(out, 0, sizeof *out);
    *prompt_out = NULL;
    if (!prompt) return kiln_error(KILN_EINVAL, "prompt is NULL");
    size_t len = strlen(prompt);
    KILN_TRY(kiln_py_check_utf8(prompt, len, "prompt"));
    char *rest = malloc(len + 1);
    if (!rest) return kiln_error(KILN_ENOMEM, "out of memory parsing extra-network tags");
    size_t n = 0, i = 0;
    int cap = 0, rc = 0;
    while (i < len) {
        size_t name_end, end;
        if (prompt[i] == '<' && match_tag(prompt, len, i, &name_end, &end)) {
            if (out->n == cap) {
                cap = cap ? cap * 2 : 4;
                kiln_extra_network_params *p = realloc(out->items, (size_t)cap * sizeof *p);
                if (!p) {
                    rc = kiln_error(KILN_ENOMEM, "out of memory parsing extra-network tags");
                    break;
                }
                out->items = p;
            }
            kiln_extra_network_params *p = &out->items[out->n];
            memset(p, 0, sizeof *p);
            rc = params_fill(p, prompt + i + 1, name_end - i - 1, prompt + name_end + 1, end - name_end - 2);
            if (rc) break;
            out->n++;
            i = end;
        } else {
            rest[n++] = prompt[i++];
        }
    }
    rest[n] = '\0';
    if (rc) {
        free(rest);
        kiln_extra_networks_free(out);
        return rc;
    }
    *prompt_out = rest;
    return 0;
}

void kiln_extra_networks_free(kiln_extra_networks *en) {
    if (!en) return;
    for (int i = 0; i < en->n; i++) params_free(&en->items[i]);
    free(en->items);
    en->items = NULL;
    en->n = 0;
}

const char *kiln_extra_network_named(const kiln_extra_network_params *p, const char *key) {
    const char *v = NULL;
    for (int i = 0; i < p->n_named; i++)
        if (strcmp(p->named_keys[i], key) == 0) v = p->named_values[i];
    return v;
}

static int lora_float(const kiln_extra_network_params *p, const char *what, const char *text, double *v) {
    int rc = kiln_py_float(text, strlen(text), v);
    if (rc) return kiln_error_context(rc, "<lora:%s>: %s multiplier", p->n_positional ? p->positional[0] : "", what);
    if (!isfinite(*v))
        return kiln_error(KILN_EINVAL, "<lora:%s>: %s multiplier '%s' is not a finite number",
                          p->n_positional ? p->positional[0] : "", what, text);
    return 0;
}

int kiln_extra_network_lora(const kiln_extra_network_params *p, kiln_lora_request *out) {
    if (p->n_positional < 1)
        return kiln_error(KILN_EINVAL, "<%s:...> tag has no network name (every argument is key=value)", p->type);
    kiln_lora_request r = {p->positional[0], 1.0, 1.0, -1};
    const char *v;
    if (p->n_positional > 1) KILN_TRY(lora_float(p, "text-encoder", p->positional[1], &r.te_multiplier));
    if ((v = kiln_extra_network_named(p, "te"))) KILN_TRY(lora_float(p, "te=", v, &r.te_multiplier));
    r.unet_multiplier = r.te_multiplier;
    if (p->n_positional > 2) KILN_TRY(lora_float(p, "UNet", p->positional[2], &r.unet_multiplier));
    if ((v = kiln_extra_network_named(p, "unet"))) KILN_TRY(lora_float(p, "unet=", v, &r.unet_multiplier));
    int rc = 0;
    if (p->n_positional > 3) rc = kiln_py_int(p->positional[3], strlen(p->positional[3]), &r.dyn_dim);
    if (rc == 0 && (v = kiln_extra_network_named(p, "dyn"))) rc = kiln_py_int(v, strlen(v), &r.dyn_dim);
    if (rc) return kiln_error_context(rc, "<lora:%s>: dyn", r.name);
    *out = r;
    return 0;
}
