/* memory.c — the memory planner: slot lifetimes and arena offsets.
 *
 * Every input and activation gets a byte range in one arena of plan->arena_bytes. A slot
 * is live from the op that writes it (inputs: from the start) to the last op that reads
 * it; inputs and outputs stay live for the whole run, so a caller can read outputs after
 * the last op and the backend may copy inputs in before the first. Two slots whose
 * lifetimes overlap never share bytes; an op's output never aliases its inputs (their
 * lifetimes meet at that op).
 *
 * Placement is greedy by size: the largest slots are placed first, each in the smallest
 * gap between already-placed slots it conflicts with that fits it (best fit), or after
 * all of them. This is the usual heuristic of inference runtimes and lands close to the
 * peak of simultaneously live bytes on chain-like networks. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "plan/plan.h"

/* Offsets are aligned for vector loads on the CPU and coalesced access on GPUs. */
#define ARENA_ALIGN 256

typedef struct live_range {
    int slot;
    int first, last; /* op indices, inclusive */
    size_t size;     /* bytes, rounded up to ARENA_ALIGN */
    size_t offset;
} live_range;

static int by_size_desc(const void *a, const void *b) {
    const live_range *x = a, *y = b;
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    /* earlier-born first keeps the result deterministic */
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

static int by_offset(const void *a, const void *b) {
    const live_range *const *x = a, *const *y = b;
    if ((*x)->offset != (*y)->offset) return (*x)->offset < (*y)->offset ? -1 : 1;
    return 0;
}

/* Computes producer-based lifetimes into slot->last_use. */
static void compute_last_use(kiln_plan *p) {
    for (int i = 0; i < p->n_slots; i++) p->slots[i].last_use = p->slots[i].producer;
    for (int o = 0; o < p->n_ops; o++) {
        const kiln_op *op = &p->ops[o];
        for (int j = 0; j < op->n_in; j++)
            if (op->in[j] >= 0 && p->slots[op->in[j]].last_use < o) p->slots[op->in[j]].last_use = o;
    }
}

int kiln_plan_finalize(kiln_plan *p) {
    if (p->status) return p->status;
    compute_last_use(p);

    int n = 0;
    live_range *r = malloc((size_t)(p->n_slots ? p->n_slots : 1) * sizeof *r);
    live_range **conflicts = malloc((size_t)(p->n_slots ? p->n_slots : 1) * sizeof *conflicts);
    if (!r || !conflicts) {
        free(r);
        free(conflicts);
        p->status = kiln_error(KILN_ENOMEM, "out of memory planning %d slots", p->n_slots);
        return p->status;
    }
    int end = p->n_ops; /* "after the last op": outputs and inputs live to here */
    for (int i = 0; i < p->n_slots; i++) {
        kiln_slot *s = &p->slots[i];
        s->arena_offset = 0;
        if (s->kind == KILN_SLOT_WEIGHT) continue;
        live_range *lr = &r[n++];
        lr->slot = i;
        lr->first = s->kind == KILN_SLOT_INPUT ? -1 : s->producer;
        lr->last = (s->kind == KILN_SLOT_INPUT || s->is_output) ? end : s->last_use;
        size_t bytes = (size_t)kiln_slot_numel(s) * 4; /* F32 and I32 are both 4 bytes */
        lr->size = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
        lr->offset = 0;
    }
    qsort(r, (size_t)n, sizeof *r, by_size_desc);

    size_t total = 0;
    for (int i = 0; i < n; i++) {
        live_range *cur = &r[i];
        int nc = 0;
        for (int j = 0; j < i; j++)
            if (r[j].first <= cur->last && cur->first <= r[j].last) conflicts[nc++] = &r[j];
        qsort(conflicts, (size_t)nc, sizeof *conflicts, by_offset);
        /* walk the gaps between conflicting ranges in offset order; keep the tightest fit */
        size_t best = (size_t)-1, best_gap = (size_t)-1, at = 0;
        for (int j = 0; j < nc; j++) {
            if (conflicts[j]->offset > at) {
                size_t gap = conflicts[j]->offset - at;
                if (gap >= cur->size && gap < best_gap) {
                    best_gap = gap;
                    best = at;
                }
            }
            size_t e = conflicts[j]->offset + conflicts[j]->size;
            if (e > at) at = e;
        }
        cur->offset = best != (size_t)-1 ? best : at;
        if (cur->offset + cur->size > total) total = cur->offset + cur->size;
    }
    for (int i = 0; i < n; i++) p->slots[r[i].slot].arena_offset = r[i].offset;
    p->arena_bytes = total;
    free(r);
    free(conflicts);
    return 0;
}
