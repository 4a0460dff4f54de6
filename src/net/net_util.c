/* net_util.c — the layers every network builder shares: named weights, linear, conv, norms. */
#include <stdio.h>

#include "net/net.h"

int kiln_net_weight(kiln_plan *p, const char *prefix, const char *suffix, int ndim, int64_t d0, int64_t d1,
                    int64_t d2, int64_t d3) {
    char name[512];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    const int64_t shape[4] = {d0, d1, d2, d3};
    return kiln_plan_weight(p, name, ndim, shape);
}

int kiln_net_linear(kiln_plan *p, int x, const char *prefix, int64_t in, int64_t out, int has_bias) {
    int w = kiln_net_weight(p, prefix, ".weight", 2, out, in, 0, 0);
    int b = has_bias ? kiln_net_weight(p, prefix, ".bias", 1, out, 0, 0, 0) : -1;
    return kiln_plan_linear(p, x, w, b);
}

int kiln_net_conv(kiln_plan *p, int x, const char *prefix, int64_t in, int64_t out, int k, int stride, int pad) {
    int w = kiln_net_weight(p, prefix, ".weight", 4, out, in, k, k);
    int b = kiln_net_weight(p, prefix, ".bias", 1, out, 0, 0, 0);
    return kiln_plan_conv2d(p, x, w, b, stride, pad);
}

int kiln_net_group_norm(kiln_plan *p, int x, const char *prefix, int64_t channels, int groups, float eps,
                        kiln_activation act) {
    int g = kiln_net_weight(p, prefix, ".weight", 1, channels, 0, 0, 0);
    int b = kiln_net_weight(p, prefix, ".bias", 1, channels, 0, 0, 0);
    return kiln_plan_group_norm(p, x, g, b, groups, eps, act);
}

int kiln_net_layer_norm(kiln_plan *p, int x, const char *prefix, int64_t channels, float eps) {
    int g = kiln_net_weight(p, prefix, ".weight", 1, channels, 0, 0, 0);
    int b = kiln_net_weight(p, prefix, ".bias", 1, channels, 0, 0, 0);
    return kiln_plan_layer_norm(p, x, g, b, eps);
}

int64_t kiln_net_channels(const kiln_plan *p, int slot) {
    return kiln_plan_slot(p, slot)->shape[1];
}
