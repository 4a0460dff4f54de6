/* ctx.h — the generation context behind kiln_ctx: a model, a backend, a tokenizer and the
 * compiled plans it has made so far (one per network and shape, reused across requests). */
#ifndef KILN_PIPELINE_CTX_H
#define KILN_PIPELINE_CTX_H

#include "backend/backend.h"
#include "core/log.h"
#include "kiln.h"
#include "model/model.h"
#include "plan/plan.h"
#include "text/chunker.h"

typedef enum kiln_net_kind { KILN_NET_CLIP, KILN_NET_UNET, KILN_NET_VAE_DECODER, KILN_NET_VAE_ENCODER } kiln_net_kind;

/* A compiled plan and the key it was built for. */
typedef struct kiln_cached_plan {
    kiln_net_kind kind;
    int batch, h, w, extra;        /* extra: context length (U-Net) or clip skip (CLIP) */
    kiln_plan *plan;
    kiln_compiled *compiled;
    int n_in, n_out;
    int *in_slots, *out_slots;     /* the backend's buffer order */
    uint64_t weights_stamp;        /* kiln_ctx_weights_stamp() when compiled: a LoRA merge or restore changes it,
                                      and the plan is compiled again unless the backend refits weights itself */
} kiln_cached_plan;

struct kiln_ctx {
    kiln_model *model;             /* not owned */
    kiln_backend *backend;
    kiln_tokenizer *tokenizer;
    char *embeddings_dir, *lora_dir;
    kiln_logger log;
    int n_plans, cap_plans;
    kiln_cached_plan *plans;
    struct kiln_embeddings *embeddings; /* textual inversions from embeddings_dir (NULL = none) */
    kiln_embedding_ref *ti_refs;   /* their chunker view, and */
    const float **ti_vectors;      /* their vectors, in the same order */
    char model_hash[11];           /* A1111 "Model hash", computed on first use (hashing a checkpoint takes seconds) */
    int model_hash_done;
    double run_seconds;            /* wall time spent in kiln_ctx_run (network calls incl. host copies), for benchmarks */
};

/* Sum of the weight store's versions: changes whenever a tensor's values change. */
uint64_t kiln_ctx_weights_stamp(const kiln_ctx *ctx);

/* The compiled plan for a network at a shape, built and compiled on first use. */
int kiln_ctx_plan(kiln_ctx *ctx, kiln_net_kind kind, int batch, int h, int w, int extra, kiln_cached_plan **out);
/* Runs a cached plan; names/bufs give every input and output by slot name. */
int kiln_ctx_run(kiln_ctx *ctx, kiln_cached_plan *cp, int n, const char *const *names, void *const *bufs);

#endif
