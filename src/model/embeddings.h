/* embeddings.h — textual-inversion embeddings from a directory, as A1111 v1.9.4's EmbeddingDatabase
 * (modules/textual_inversion/textual_inversion.py) loads them.
 *
 * Every file under the directory (recursively; in sorted order here, where A1111 takes os.walk's)
 * with a known extension and a non-zero size is read:
 *   .safetensors          — safetensors
 *   .pt, .bin             — PyTorch zip checkpoints through the restricted reader (io/ckpt.h)
 *   .png .webp .jxl .avif — embeddings hidden in images: not supported, ignored (counted)
 * create_embedding_from_data decides what the tensors mean:
 *   - a "string_to_param" dict (the .pt files A1111 trains; the reader flattens it to
 *     "string_to_param.*"): exactly one entry, its [n, H] tensor;
 *   - "clip_g" and "clip_l" (SDXL): vectors [n, 768 + 1280] here, each row clip_l then clip_g;
 *   - otherwise exactly one tensor ("diffusers concepts", e.g. {"emb_params": [n, H]}); a 1-D [H]
 *     tensor is one vector. Two or more tensors: "embedding file has multiple terms in it" — the
 *     file is skipped with that message, as A1111 reports it and goes on.
 * The name is the file stem; vectors are converted to float32. An embedding whose width differs from
 * the model's text-encoder width is skipped (A1111's skipped_embeddings) and counted. A name seen
 * again (same stem in another folder) keeps the first file (A1111 matches the first registered). */
#ifndef KILN_MODEL_EMBEDDINGS_H
#define KILN_MODEL_EMBEDDINGS_H

#include <stdint.h>

#include "kiln.h"
#include "model/model_config.h"
#include "text/chunker.h"

typedef struct kiln_embedding {
    char *name;           /* file stem: the word prompts use */
    char *path;
    int n_vectors;        /* rows, 1 .. 75 */
    int width;            /* columns (the text encoder's hidden size; SDXL: 768 + 1280) */
    float *vectors;       /* [n_vectors, width] float32 */
    int32_t *name_ids;    /* the name tokenized like prompt text (no BOS/EOS) */
    int n_name_ids;
} kiln_embedding;

typedef struct kiln_embeddings {
    int expected_width;   /* what the model's text encoder takes */
    const kiln_tokenizer *tok;
    int n;
    kiln_embedding *items; /* in load order (= registration order, which breaks ties in matching) */
    int n_skipped_width;  /* embeddings of another width (another model family) */
    int n_failed;         /* files that are not readable embeddings */
    int n_unsupported;    /* image embeddings (.png/.webp/...) and duplicate names, ignored */
    char log[1024];       /* "name: reason; ..." for the skipped and failed ones (truncated with "...") */
} kiln_embeddings;

/* The width textual-inversion vectors must have for this model (A1111 get_expected_shape):
 * the CLIP hidden size, or for SDXL both encoders' widths added. */
int kiln_embedding_width(const kiln_model_config *cfg);

/* An empty database for vectors of expected_width; tok (kept, not owned) tokenizes the names. */
int kiln_embeddings_new(int expected_width, const kiln_tokenizer *tok, kiln_embeddings **out);
void kiln_embeddings_free(kiln_embeddings *db);

/* Adds every embedding file under dir. Files that fail are counted and logged, not errors; a
 * directory that cannot be read is (KILN_ENOTFOUND / KILN_EIO naming it). */
int kiln_embeddings_add_dir(kiln_embeddings *db, const char *dir);
/* Adds one file. Returns 1 when added, 0 when skipped (wrong width, duplicate name, an image),
 * or a negative KILN_E* with the reason (multiple terms, unknown layout, unreadable file). */
int kiln_embeddings_add_file(kiln_embeddings *db, const char *path);

/* kiln_embeddings_new + kiln_embeddings_add_dir. */
int kiln_embeddings_load_dir(const char *dir, int expected_width, const kiln_tokenizer *tok,
                             kiln_embeddings **out);

/* The embedding named name, or NULL. */
const kiln_embedding *kiln_embeddings_find(const kiln_embeddings *db, const char *name);

/* Fills refs[0 .. db->n - 1] for the chunker (kiln_chunker_options.embeddings); the pointers stay
 * valid while db lives and no embedding is added. The chunker's fix.embedding indexes db->items. */
void kiln_embeddings_refs(const kiln_embeddings *db, kiln_embedding_ref *refs);
/* Fills vectors[0 .. db->n - 1] with each embedding's [n_vectors, width] rows, in the same order
 * (pipeline/conditioning.h kiln_ti_set.vectors). */
void kiln_embeddings_vectors(const kiln_embeddings *db, const float **vectors);

#endif
