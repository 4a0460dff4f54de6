/* extra_networks.h — A1111 extra-network prompt tags: every <NAME:ARGS> (regex <(\w+):([^>]+)>) is
 * cut out of the positive prompt before anything else reads it (modules/extra_networks.py
 * parse_prompt, webui v1.9.4), and the LoRA reading of the arguments
 * (extensions-builtin/Lora/extra_networks_lora.py).
 *
 *   "a landscape, <lora:tiny_lora:0.8> mountains"
 *     -> prompt "a landscape,  mountains" (the tag becomes "", the spaces around it stay)
 *     -> [{type "lora", items ["tiny_lora", "0.8"], positional ["tiny_lora", "0.8"]}]
 *
 * Negative prompts are not scanned by A1111 (a tag there stays text): call this on the positive
 * prompt only. Tags of every NAME are returned; A1111 skips (with a log line) names it has no
 * extra network for. */
#ifndef KILN_TEXT_EXTRA_NETWORKS_H
#define KILN_TEXT_EXTRA_NETWORKS_H

typedef struct kiln_extra_network_params {
    char *type;          /* NAME of <NAME:ARGS>, e.g. "lora", "hypernet" (owned) */
    int n_items;
    char **items;        /* ARGS split on ':', in order (owned) */
    int n_positional;
    char **positional;   /* the items that do not contain exactly one '=' (point into items) */
    int n_named;
    char **named_keys;   /* items "key=value" (exactly one '='): their two halves (owned) */
    char **named_values;
} kiln_extra_network_params;

typedef struct kiln_extra_networks {
    kiln_extra_network_params *items; /* in prompt order */
    int n;
} kiln_extra_networks;

/* Cuts the tags out of prompt. *prompt_out receives the remaining prompt (malloc'd, free it) and
 * *out the tags. Fails with KILN_EINVAL on invalid UTF-8; on failure nothing is allocated. */
int kiln_extra_networks_parse(const char *prompt, char **prompt_out, kiln_extra_networks *out);
void kiln_extra_networks_free(kiln_extra_networks *en);

/* The value of named argument key (the last one if repeated, like A1111's dict), or NULL. */
const char *kiln_extra_network_named(const kiln_extra_network_params *p, const char *key);

/* A <lora:...> tag read as A1111's Lora extension reads it. */
typedef struct kiln_lora_request {
    const char *name;       /* positional 0: file stem or alias (points into the params) */
    double te_multiplier;   /* positional 1, or te=; default 1.0 */
    double unet_multiplier; /* positional 2, or unet=; default the te multiplier */
    int dyn_dim;            /* positional 3, or dyn=; -1 when not given */
} kiln_lora_request;

/* Reads one "lora" tag. KILN_EINVAL when it has no name or a multiplier is not a number A1111's
 * float() accepts (A1111 then fails to activate every LoRA of the prompt), or is not finite. */
int kiln_extra_network_lora(const kiln_extra_network_params *p, kiln_lora_request *out);

#endif
