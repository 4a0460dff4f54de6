/* ckpt_pickle.c — the restricted pickle interpreter behind io/ckpt.c. See ckpt_pickle.h.
 *
 * Safety rests on three rules: no opcode ever runs code (REDUCE/NEWOBJ/BUILD are interpreted for
 * the few known globals and otherwise yield inert placeholders), GLOBAL accepts only listed names,
 * and every read, index and allocation is bounded by the input size. */
#include "io/ckpt_pickle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

/* ---- arena: every value and array of one load, freed at once ---- */
struct pk_arena {
    struct pk_block *blocks;
    size_t used_total;
};
typedef struct pk_block {
    struct pk_block *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
} pk_block;

static void *arena_alloc(pk_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    pk_block *b = a->blocks;
    if (!b || b->size - b->used < n) {
        size_t size = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + size);
        if (!b) return NULL;
        b->size = size;
        b->used = 0;
        b->next = a->blocks;
        a->blocks = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    a->used_total += n;
    memset(p, 0, n);
    return p;
}

void pk_arena_free(pk_arena *a) {
    if (!a) return;
    for (pk_block *b = a->blocks, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(a);
}

/* ---- allowed globals ---- */
enum {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_TENSOR,
    G_REBUILD_PARAMETER,
    G_REBUILD_PARAMETER_STATE,
    G_TORCH_SIZE,
    G_REBUILD_FROM_TYPE_V2,
    G_STORAGE,   /* + storage type */
    G_INERT = 100,
};

static const struct {
    const char *module, *name;
    int id;
} allowed[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_tensor", G_REBUILD_TENSOR},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER},
    {"torch._utils", "_rebuild_parameter_with_state", G_REBUILD_PARAMETER_STATE},
    {"torch", "Size", G_TORCH_SIZE},
    {"torch._tensor", "_rebuild_from_type_v2", G_REBUILD_FROM_TYPE_V2},
    {"torch._utils", "_rebuild_from_type_v2", G_REBUILD_FROM_TYPE_V2},
    {"torch", "Tensor", G_INERT},
    {"torch.nn.parameter", "Parameter", G_INERT},
    {"torch", "FloatStorage", G_STORAGE + PK_ST_FLOAT},
    {"torch", "HalfStorage", G_STORAGE + PK_ST_HALF},
    {"torch", "BFloat16Storage", G_STORAGE + PK_ST_BFLOAT16},
    {"torch", "DoubleStorage", G_STORAGE + PK_ST_DOUBLE},
    {"torch", "LongStorage", G_STORAGE + PK_ST_LONG},
    {"torch", "IntStorage", G_STORAGE + PK_ST_INT},
    {"torch", "ShortStorage", G_STORAGE + PK_ST_SHORT},
    {"torch", "CharStorage", G_STORAGE + PK_ST_CHAR},
    {"torch", "ByteStorage", G_STORAGE + PK_ST_BYTE},
    {"torch", "BoolStorage", G_STORAGE + PK_ST_BOOL},
    /* Found in SD checkpoints outside the weights (A1111's safe unpickler allows them too);
     * they become placeholders and are never called. */
    {"torch", "float32", G_INERT},
    {"torch", "float16", G_INERT},
    {"torch", "bfloat16", G_INERT},
    {"torch.nn.modules.container", "ParameterDict", G_INERT},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", G_INERT},
    {"numpy.core.multiarray", "scalar", G_INERT},
    {"numpy.core.multiarray", "_reconstruct", G_INERT},
    {"numpy._core.multiarray", "scalar", G_INERT},
    {"numpy._core.multiarray", "_reconstruct", G_INERT},
    {"numpy", "dtype", G_INERT},
    {"numpy", "ndarray", G_INERT},
    {"_codecs", "encode", G_INERT},
    {"pytorch_lightning.callbacks", "model_checkpoint", G_INERT},
    {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", G_INERT},
    {"__builtin__", "set", G_INERT},
    {"builtins", "set", G_INERT},
};

static const char *const storage_names[PK_ST_COUNT] = {
    "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.DoubleStorage",
    "torch.LongStorage",  "torch.IntStorage",  "torch.ShortStorage",    "torch.CharStorage",
    "torch.ByteStorage",  "torch.BoolStorage"};
static const size_t storage_sizes[PK_ST_COUNT] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};

const char *pk_storage_name(pk_storage_type t) { return t < PK_ST_COUNT ? storage_names[t] : "?"; }
size_t pk_storage_elsize(pk_storage_type t) { return t < PK_ST_COUNT ? storage_sizes[t] : 0; }

/* ---- interpreter state ---- */
typedef struct vm {
    const uint8_t *p, *end, *start;
    const char *name;
    pk_arena *a;
    pk_value **stack;
    size_t sp, stack_cap;
    size_t *marks; /* stack heights at MARK */
    size_t n_marks, marks_cap;
    pk_value **memo;
    size_t memo_cap;
    size_t memo_next; /* MEMOIZE index */
    pk_value **storages; /* persistent ids seen: open-addressing hash on (type, key) */
    size_t n_storages, storages_cap; /* cap is a power of two, at least twice the count */
    pk_value *none;
} vm;

static int fail(vm *m, const char *fmt, const char *detail) {
    return kiln_error(KILN_EFORMAT, "%s: pickle (at byte %zu): %s%s", m->name, (size_t)(m->p - m->start), fmt,
                      detail ? detail : "");
}

static pk_value *new_value(vm *m, pk_kind k) {
    pk_value *v = arena_alloc(m->a, sizeof *v);
    if (v) v->kind = k;
    return v;
}

static int grow(void **arr, size_t *cap, size_t need, size_t elsize) {
    if (need <= *cap) return 1;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*arr, c * elsize);
    if (!q) return 0;
    *arr = q;
    *cap = c;
    return 1;
}

/* Appends to a container's item array (arena-backed: a grown array is copied, the old one stays
 * in the arena until the end). */
static int add_item(vm *m, pk_value *c, pk_value *v) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        pk_value **items = arena_alloc(m->a, cap * sizeof *items);
        if (!items) return 0;
        if (c->n) memcpy(items, c->items, c->n * sizeof *items);
        c->items = items;
        c->cap = cap;
    }
    c->items[c->n++] = v;
    return 1;
}

static int push(vm *m, pk_value *v) {
    if (!v) return kiln_error(KILN_ENOMEM, "%s: out of memory unpickling", m->name);
    if (!grow((void **)&m->stack, &m->stack_cap, m->sp + 1, sizeof *m->stack))
        return kiln_error(KILN_ENOMEM, "%s: out of memory unpickling", m->name);
    m->stack[m->sp++] = v;
    return KILN_OK;
}

static pk_value *pop(vm *m) {
    size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
    if (m->sp <= floor) return NULL;
    return m->stack[--m->sp];
}

static pk_value *top(vm *m) {
    size_t floor = m->n_marks ? m->marks[m->n_marks - 1] : 0;
    return m->sp > floor ? m->stack[m->sp - 1] : NULL;
}

/* Pops everything above the last MARK into a new container of kind k. */
static int pop_mark_into(vm *m, pk_kind k, pk_value **out) {
    if (!m->n_marks) return fail(m, "no MARK for a tuple/list/dict", NULL);
    size_t base = m->marks[--m->n_marks];
    pk_value *c = new_value(m, k);
    if (!c) return kiln_error(KILN_ENOMEM, "%s: out of memory unpickling", m->name);
    size_t n = m->sp - base;
    if (n) {
        c->items = arena_alloc(m->a, n * sizeof *c->items);
        if (!c->items) return kiln_error(KILN_ENOMEM, "%s: out of memory unpickling", m->name);
        memcpy(c->items, m->stack + base, n * sizeof *c->items);
    }
    c->n = c->cap = n;
    m->sp = base;
    *out = c;
    return KILN_OK;
}

static int need(vm *m, size_t n) { return (size_t)(m->end - m->p) >= n; }

static uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* A string/bytes value of n bytes from the input. */
static int push_text(vm *m, pk_kind k, uint64_t n) {
    if (!need(m, n)) return fail(m, "string runs past the end", NULL);
    pk_value *v = new_value(m, k);
    char *s = v ? arena_alloc(m->a, (size_t)n + 1) : NULL;
    if (!s) return kiln_error(KILN_ENOMEM, "%s: out of memory unpickling", m->name);
    memcpy(s, m->p, (size_t)n);
    s[n] = 0;
    v->s = s;
    v->len = (size_t)n;
    m->p += n;
    return push(m, v);
}

/* A text line (protocol 0 argument) without its newline. */
static int read_line(vm *m, const char **s, size_t *n) {
    const uint8_t *nl = memchr(m->p, '\n', (size_t)(m->end - m->p));
    if (!nl) return fail(m, "unterminated text argument", NULL);
    *s = (const char *)m->p;
    *n = (size_t)(nl - m->p);
    m->p = nl + 1;
    return KILN_OK;
}

static int push_global(vm *m, const char *mod, size_t ml, const char *name, size_t nl) {
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        if (strlen(allowed[i].module) == ml && memcmp(allowed[i].module, mod, ml) == 0 &&
            strlen(allowed[i].name) == nl && memcmp(allowed[i].name, name, nl) == 0) {
            pk_value *v = new_value(m, PK_GLOBAL);
            if (v) v->i = allowed[i].id;
            return push(m, v);
        }
    char buf[160];
    snprintf(buf, sizeof buf, "%.*s.%.*s", (int)(ml > 70 ? 70 : ml), mod, (int)(nl > 70 ? 70 : nl), name);
    return kiln_error(KILN_EUNSUPPORTED,
                      "%s: the checkpoint's pickle refers to '%s', which is not allowed (kiln loads only tensors "
                      "and never runs code from a checkpoint)",
                      m->name, buf);
}

static int as_int(const pk_value *v, int64_t *out) {
    if (!v || (v->kind != PK_INT && v->kind != PK_BOOL)) return 0;
    *out = v->i;
    return 1;
}

/* A shape/stride tuple (or torch.Size, which we turn into a tuple). */
static int as_dims(const pk_value *v, int64_t *dims, int *ndim) {
    if (!v || (v->kind != PK_TUPLE && v->kind != PK_LIST) || v->n > KILN_MAX_DIMS) return 0;
    for (size_t i = 0; i < v->n; i++)
        if (!as_int(v->items[i], &dims[i]) || dims[i] < 0) return 0;
    *ndim = (int)v->n;
    return 1;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
 * and the older _rebuild_tensor(storage, storage_offset, size, stride). */
static int rebuild_tensor(vm *m, const pk_value *args, pk_value **out) {
    if (args->kind != PK_TUPLE || args->n < 4) return fail(m, "tensor rebuild with too few arguments", NULL);
    pk_value *t = new_value(m, PK_TENSOR);
    if (!t) return kiln_error(KILN_ENOMEM, "%s: out of memory unpickling", m->name);
    int nd_stride = 0;
    if (args->items[0]->kind != PK_STORAGE) return fail(m, "tensor rebuild without a storage", NULL);
    t->storage = args->items[0];
    if (!as_int(args->items[1], &t->offset) || t->offset < 0) return fail(m, "bad tensor storage offset", NULL);
    if (!as_dims(args->items[2], t->shape, &t->ndim))
        return fail(m, "bad tensor size (not a tuple of up to 8 non-negative ints)", NULL);
    if (!as_dims(args->items[3], t->stride, &nd_stride) || nd_stride != t->ndim)
        return fail(m, "bad tensor stride", NULL);
    *out = t;
    return KILN_OK;
}

/* REDUCE/NEWOBJ: callable(*args) for the globals we understand; anything else is a placeholder. */
static int call(vm *m, pk_value *fn, pk_value *args, pk_value **out) {
    if (!fn || !args) return fail(m, "REDUCE with an empty stack", NULL);
    if (fn->kind != PK_GLOBAL || args->kind != PK_TUPLE) {
        *out = new_value(m, PK_OPAQUE);
        return *out ? KILN_OK : kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
    }
    switch (fn->i) {
    case G_ORDERED_DICT: /* OrderedDict() or OrderedDict([(k, v), ...]) */
        *out = new_value(m, PK_DICT);
        if (!*out) return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
        if (args->n == 1 && (args->items[0]->kind == PK_LIST || args->items[0]->kind == PK_TUPLE)) {
            pk_value *l = args->items[0];
            for (size_t i = 0; i < l->n; i++) {
                pk_value *kv = l->items[i];
                if (kv->kind != PK_TUPLE || kv->n != 2) return fail(m, "OrderedDict item is not a pair", NULL);
                if (!add_item(m, *out, kv->items[0]) || !add_item(m, *out, kv->items[1]))
                    return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
            }
        }
        return KILN_OK;
    case G_REBUILD_TENSOR_V2:
    case G_REBUILD_TENSOR: return rebuild_tensor(m, args, out);
    case G_REBUILD_PARAMETER:
    case G_REBUILD_PARAMETER_STATE: /* (data, requires_grad, backward_hooks[, state]) -> data */
        if (args->n < 1 || args->items[0]->kind != PK_TENSOR) return fail(m, "parameter rebuild without a tensor", NULL);
        *out = args->items[0];
        return KILN_OK;
    case G_REBUILD_FROM_TYPE_V2: /* (func, new_type, args, state) -> func(*args); the subclass is dropped */
        if (args->n < 3 || args->items[2]->kind != PK_TUPLE || args->items[0]->kind != PK_GLOBAL ||
            args->items[0]->i == G_REBUILD_FROM_TYPE_V2)
            return fail(m, "bad _rebuild_from_type_v2 arguments", NULL);
        return call(m, args->items[0], args->items[2], out);
    case G_TORCH_SIZE: /* torch.Size((d0, d1, ...)) -> the tuple */
        if (args->n == 1 && args->items[0]->kind == PK_TUPLE) {
            *out = args->items[0];
            return KILN_OK;
        }
        *out = new_value(m, PK_OPAQUE);
        return *out ? KILN_OK : kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
    default:
        *out = new_value(m, PK_OPAQUE);
        return *out ? KILN_OK : kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
    }
}

static size_t storage_hash(pk_storage_type t, const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)t;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return (size_t)h;
}

/* BINPERSID: torch's ('storage', storage_type, key, location, numel). */
static int persistent_load(vm *m, pk_value *pid, pk_value **out) {
    if (!pid || pid->kind != PK_TUPLE || pid->n < 5 || pid->items[0]->kind != PK_STR ||
        strcmp(pid->items[0]->s, "storage") != 0)
        return fail(m, "persistent id is not a torch ('storage', type, key, location, numel) tuple", NULL);
    pk_value *type = pid->items[1], *key = pid->items[2];
    int64_t numel;
    if (type->kind != PK_GLOBAL || type->i < G_STORAGE || type->i >= G_STORAGE + PK_ST_COUNT)
        return fail(m, "persistent id with an unknown storage type", NULL);
    if (key->kind != PK_STR || !as_int(pid->items[4], &numel) || numel < 0)
        return fail(m, "persistent id with a bad key or element count", NULL);
    pk_storage_type st = (pk_storage_type)(type->i - G_STORAGE);
    /* torch loads each storage key once and views share it: so do we. */
    if (2 * (m->n_storages + 1) > m->storages_cap) {
        size_t cap = m->storages_cap ? 2 * m->storages_cap : 64;
        pk_value **t = calloc(cap, sizeof *t);
        if (!t) return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
        for (size_t i = 0; i < m->storages_cap; i++) {
            pk_value *s = m->storages[i];
            if (!s) continue;
            size_t h = storage_hash(s->st_type, s->s, s->len) & (cap - 1);
            while (t[h]) h = (h + 1) & (cap - 1);
            t[h] = s;
        }
        free(m->storages);
        m->storages = t;
        m->storages_cap = cap;
    }
    size_t h = storage_hash(st, key->s, key->len) & (m->storages_cap - 1);
    for (pk_value *s; (s = m->storages[h]); h = (h + 1) & (m->storages_cap - 1))
        if (s->st_type == st && s->len == key->len && memcmp(s->s, key->s, key->len) == 0) {
            *out = s;
            return KILN_OK;
        }
    pk_value *s = new_value(m, PK_STORAGE);
    if (!s) return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
    s->st_type = st;
    s->s = key->s;
    s->len = key->len;
    s->i = numel;
    m->storages[h] = s;
    m->n_storages++;
    *out = s;
    return KILN_OK;
}

static int memo_put(vm *m, uint64_t idx) {
    pk_value *v = top(m);
    if (!v) return fail(m, "PUT with an empty stack", NULL);
    /* Pickle memo indices count up from 0; cap them by the input size so a bogus index cannot
     * make us allocate gigabytes. */
    if (idx > (uint64_t)(m->end - m->start) + 1024) return fail(m, "memo index out of range", NULL);
    size_t old = m->memo_cap;
    if (!grow((void **)&m->memo, &m->memo_cap, (size_t)idx + 1, sizeof *m->memo))
        return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
    if (m->memo_cap > old) memset(m->memo + old, 0, (m->memo_cap - old) * sizeof *m->memo);
    m->memo[idx] = v;
    return KILN_OK;
}

static int memo_get(vm *m, uint64_t idx) {
    if (idx >= m->memo_cap || !m->memo[idx]) return fail(m, "GET of an unset memo slot", NULL);
    return push(m, m->memo[idx]);
}

static int parse_int_line(vm *m, int64_t *v) {
    const char *s = NULL;
    size_t n = 0;
    KILN_TRY(read_line(m, &s, &n));
    char buf[32];
    if (n == 0 || n >= sizeof buf) return fail(m, "bad text integer", NULL);
    memcpy(buf, s, n);
    buf[n] = 0;
    if (buf[n - 1] == 'L') buf[n - 1] = 0; /* protocol 0 longs end in L */
    char *endp;
    long long x = strtoll(buf, &endp, 10);
    if (*endp) return fail(m, "bad text integer", NULL);
    *v = x;
    return KILN_OK;
}

/* One opcode. Returns 1 at STOP, 0 to continue, < 0 on error. */
static int step(vm *m) {
    if (!need(m, 1)) return fail(m, "ends without STOP", NULL);
    uint8_t op = *m->p++;
    pk_value *v, *a, *b;
    int64_t iv;
    switch (op) {
    case 0x80: /* PROTO */
        if (!need(m, 1)) return fail(m, "truncated PROTO", NULL);
        if (*m->p > 5) return fail(m, "unknown pickle protocol", NULL);
        m->p++;
        return 0;
    case 0x95: /* FRAME: just a length hint */
        if (!need(m, 8)) return fail(m, "truncated FRAME", NULL);
        m->p += 8;
        return 0;
    case '.': return 1; /* STOP */
    case '(': /* MARK */
        if (!grow((void **)&m->marks, &m->marks_cap, m->n_marks + 1, sizeof *m->marks))
            return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
        m->marks[m->n_marks++] = m->sp;
        return 0;
    case '0': /* POP */
        if (!pop(m)) return fail(m, "POP from an empty stack", NULL);
        return 0;
    case '1': /* POP_MARK */
        if (!m->n_marks) return fail(m, "POP_MARK without MARK", NULL);
        m->sp = m->marks[--m->n_marks];
        return 0;
    case '2': /* DUP */
        if (!(v = top(m))) return fail(m, "DUP of an empty stack", NULL);
        return push(m, v);
    case 'N': return push(m, m->none);
    case 0x88:
    case 0x89: /* NEWTRUE, NEWFALSE */
        if ((v = new_value(m, PK_BOOL))) v->i = op == 0x88;
        return push(m, v);
    case 'K': /* BININT1 */
    case 'M': /* BININT2 */
    case 'J': { /* BININT (signed 4 bytes) */
        int n = op == 'K' ? 1 : op == 'M' ? 2 : 4;
        if (!need(m, (size_t)n)) return fail(m, "truncated integer", NULL);
        uint64_t u = rd_le(m->p, n);
        m->p += n;
        if ((v = new_value(m, PK_INT))) v->i = op == 'J' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
        return push(m, v);
    }
    case 0x8a: /* LONG1 */
    case 0x8b: { /* LONG4 */
        int w = op == 0x8a ? 1 : 4;
        if (!need(m, (size_t)w)) return fail(m, "truncated LONG", NULL);
        uint64_t n = rd_le(m->p, w);
        m->p += w;
        if (!need(m, n)) return fail(m, "truncated LONG", NULL);
        if (n > 8) { /* a big integer: nothing in a state dict needs one */
            m->p += n;
            return push(m, new_value(m, PK_OPAQUE));
        }
        uint64_t u = n ? rd_le(m->p, (int)n) : 0;
        if (n && n < 8 && (m->p[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        m->p += n;
        if ((v = new_value(m, PK_INT))) v->i = (int64_t)u;
        return push(m, v);
    }
    case 'I': /* INT (text; "01"/"00" are True/False) */
    case 'L': /* LONG (text) */
        KILN_TRY(parse_int_line(m, &iv));
        if ((v = new_value(m, PK_INT))) v->i = iv;
        return push(m, v);
    case 'G': { /* BINFLOAT, big-endian double */
        if (!need(m, 8)) return fail(m, "truncated BINFLOAT", NULL);
        uint64_t u = 0;
        for (int i = 0; i < 8; i++) u = u << 8 | m->p[i];
        m->p += 8;
        if ((v = new_value(m, PK_FLOAT))) memcpy(&v->f, &u, 8);
        return push(m, v);
    }
    case 'X': /* BINUNICODE */
    case 0x8c: /* SHORT_BINUNICODE */
    case 0x8d: /* BINUNICODE8 */
    case 'T': /* BINSTRING (py2 str, read as text) */
    case 'U': /* SHORT_BINSTRING */
    case 'B': /* BINBYTES */
    case 'C': /* SHORT_BINBYTES */
    case 0x8e: /* BINBYTES8 */
    case 0x96: { /* BYTEARRAY8 */
        int w = (op == 0x8c || op == 'U' || op == 'C') ? 1 : (op == 0x8d || op == 0x8e || op == 0x96) ? 8 : 4;
        if (!need(m, (size_t)w)) return fail(m, "truncated string length", NULL);
        uint64_t n = rd_le(m->p, w);
        m->p += w;
        int text = op == 'X' || op == 0x8c || op == 0x8d || op == 'T' || op == 'U';
        return push_text(m, text ? PK_STR : PK_BYTES, n);
    }
    case ')': return push(m, new_value(m, PK_TUPLE)); /* EMPTY_TUPLE */
    case ']': return push(m, new_value(m, PK_LIST));  /* EMPTY_LIST */
    case '}': return push(m, new_value(m, PK_DICT));  /* EMPTY_DICT */
    case 0x8f: return push(m, new_value(m, PK_SET));  /* EMPTY_SET */
    case 't': /* TUPLE */
    case 'l': /* LIST */
    case 0x91: /* FROZENSET */
        KILN_TRY(pop_mark_into(m, op == 't' ? PK_TUPLE : op == 'l' ? PK_LIST : PK_SET, &v));
        return push(m, v);
    case 'd': /* DICT */
        KILN_TRY(pop_mark_into(m, PK_DICT, &v));
        if (v->n % 2) return fail(m, "DICT with an odd number of items", NULL);
        return push(m, v);
    case 0x85:
    case 0x86:
    case 0x87: { /* TUPLE1..3 */
        size_t n = (size_t)(op - 0x84);
        pk_value *t = new_value(m, PK_TUPLE);
        pk_value **items = t ? arena_alloc(m->a, n * sizeof *items) : NULL;
        if (!items) return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
        for (size_t i = n; i-- > 0;)
            if (!(items[i] = pop(m))) return fail(m, "TUPLEn with too few items", NULL);
        t->items = items;
        t->n = t->cap = n;
        return push(m, t);
    }
    case 'a': /* APPEND */
        if (!(v = pop(m)) || !(a = top(m))) return fail(m, "APPEND with too few items", NULL);
        if (a->kind != PK_LIST) return fail(m, "APPEND to a non-list", NULL);
        return add_item(m, a, v) ? 0 : kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
    case 'e': /* APPENDS */
    case 0x90: { /* ADDITEMS */
        KILN_TRY(pop_mark_into(m, PK_TUPLE, &v));
        if (!(a = top(m))) return fail(m, "APPENDS without a list", NULL);
        if (a->kind != (op == 'e' ? PK_LIST : PK_SET)) {
            if (a->kind != PK_OPAQUE) return fail(m, "APPENDS/ADDITEMS to the wrong kind of object", NULL);
            return 0;
        }
        for (size_t i = 0; i < v->n; i++)
            if (!add_item(m, a, v->items[i])) return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
        return 0;
    }
    case 's': /* SETITEM */
        if (!(b = pop(m)) || !(a = pop(m)) || !(v = top(m))) return fail(m, "SETITEM with too few items", NULL);
        if (v->kind == PK_OPAQUE) return 0;
        if (v->kind != PK_DICT) return fail(m, "SETITEM on a non-dict", NULL);
        return add_item(m, v, a) && add_item(m, v, b) ? 0 : kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
    case 'u': /* SETITEMS */
        KILN_TRY(pop_mark_into(m, PK_TUPLE, &a));
        if (!(v = top(m))) return fail(m, "SETITEMS without a dict", NULL);
        if (v->kind == PK_OPAQUE) return 0;
        if (v->kind != PK_DICT || a->n % 2) return fail(m, "SETITEMS on a non-dict or with an odd count", NULL);
        for (size_t i = 0; i < a->n; i++)
            if (!add_item(m, v, a->items[i])) return kiln_error(KILN_ENOMEM, "%s: out of memory", m->name);
        return 0;
    case 'c': { /* GLOBAL "module\nname\n" */
        const char *mod = NULL, *name = NULL;
        size_t ml = 0, nl = 0;
        KILN_TRY(read_line(m, &mod, &ml));
        KILN_TRY(read_line(m, &name, &nl));
        return push_global(m, mod, ml, name, nl);
    }
    case 0x93: /* STACK_GLOBAL */
        if (!(b = pop(m)) || !(a = pop(m)) || a->kind != PK_STR || b->kind != PK_STR)
            return fail(m, "STACK_GLOBAL needs two strings", NULL);
        return push_global(m, a->s, a->len, b->s, b->len);
    case 'R': /* REDUCE */
    case 0x81: /* NEWOBJ: cls.__new__(cls, *args), same shape */
        if (!(a = pop(m)) || !(v = pop(m))) return fail(m, "REDUCE with too few items", NULL);
        KILN_TRY(call(m, v, a, &b));
        return push(m, b);
    case 0x92: /* NEWOBJ_EX (cls, args, kwargs) */
        if (!pop(m) || !(a = pop(m)) || !(v = pop(m))) return fail(m, "NEWOBJ_EX with too few items", NULL);
        KILN_TRY(call(m, v, a, &b));
        return push(m, b);
    case 'b': /* BUILD: set state; dicts (OrderedDict _metadata) and placeholders ignore it */
        if (!pop(m) || !top(m)) return fail(m, "BUILD with too few items", NULL);
        return 0;
    case 'Q': /* BINPERSID */
        if (!(a = pop(m))) return fail(m, "BINPERSID with an empty stack", NULL);
        KILN_TRY(persistent_load(m, a, &v));
        return push(m, v);
    case 'q': /* BINPUT */
        if (!need(m, 1)) return fail(m, "truncated BINPUT", NULL);
        return memo_put(m, *m->p++);
    case 'r': /* LONG_BINPUT */
        if (!need(m, 4)) return fail(m, "truncated LONG_BINPUT", NULL);
        m->p += 4;
        return memo_put(m, rd_le(m->p - 4, 4));
    case 0x94: /* MEMOIZE */
        KILN_TRY(memo_put(m, m->memo_next));
        m->memo_next++;
        return 0;
    case 'h': /* BINGET */
        if (!need(m, 1)) return fail(m, "truncated BINGET", NULL);
        return memo_get(m, *m->p++);
    case 'j': /* LONG_BINGET */
        if (!need(m, 4)) return fail(m, "truncated LONG_BINGET", NULL);
        m->p += 4;
        return memo_get(m, rd_le(m->p - 4, 4));
    case 'p': /* PUT (text index) */
    case 'g': /* GET (text index) */
        KILN_TRY(parse_int_line(m, &iv));
        if (iv < 0) return fail(m, "negative memo index", NULL);
        return op == 'p' ? memo_put(m, (uint64_t)iv) : memo_get(m, (uint64_t)iv);
    default: {
        char what[48];
        snprintf(what, sizeof what, "0x%02x", op);
        return fail(m, "opcode not allowed in a checkpoint: ", what);
    }
    }
}

int pk_load(const uint8_t *data, size_t size, const char *name, pk_arena **arena, pk_value **root) {
    vm m;
    memset(&m, 0, sizeof m);
    m.p = m.start = data;
    m.end = data + size;
    m.name = name;
    m.a = calloc(1, sizeof *m.a);
    *arena = m.a;
    if (!m.a || !(m.none = new_value(&m, PK_NONE))) return kiln_error(KILN_ENOMEM, "%s: out of memory", name);
    int rc;
    while ((rc = step(&m)) == 0) {
        /* The values a pickle can make are bounded by its size; a small input that asks for far
         * more memory is hostile. */
        if (m.a->used_total > (size_t)64 * (size + 4096)) {
            rc = fail(&m, "uses too much memory for its size", NULL);
            break;
        }
    }
    if (rc == 1) {
        if (m.sp != 1 || m.n_marks) {
            rc = fail(&m, "STOP with an unbalanced stack", NULL);
        } else {
            *root = m.stack[0];
            rc = KILN_OK;
        }
    }
    free(m.stack);
    free(m.marks);
    free(m.memo);
    free(m.storages);
    return rc;
}
