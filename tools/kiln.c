/* kiln.c — the command-line interface: info, tokenize (and, as they land, generate, build, bench, serve).
 *
 * Contract (DESIGN.md): exit 0 on success, 1 on a user error with a one-line message on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln.h"

static int fail(const char *what) {
    fprintf(stderr, "kiln: %s%s%s\n", what, *kiln_last_error() ? ": " : "", kiln_last_error());
    return 1;
}

static int usage(FILE *f) {
    fprintf(f, "usage: kiln <command> [options]\n"
               "commands:\n"
               "  info MODEL                describe a checkpoint (.safetensors) or diffusers folder\n"
               "  tokenize [--vocab FILE | -m MODEL] PROMPT\n"
               "                            print the CLIP token ids (BOS/EOS included) as a JSON array\n"
               "  mkrandom [--arch sd15|tiny-sd15] [--seed N] -o FILE.safetensors\n"
               "                            write a checkpoint with random weights (for benchmarks)\n"
               "  version                   print the version\n");
    return f == stderr ? 1 : 0;
}

static int cmd_info(int argc, char **argv) {
    if (argc != 1) {
        fprintf(stderr, "kiln info: expected one MODEL argument\n");
        return 1;
    }
    kiln_model *m = NULL;
    if (kiln_model_load(argv[0], NULL, &m)) return fail("info");
    size_t need = kiln_model_describe(m, NULL, 0) + 1;
    char *buf = malloc(need);
    kiln_model_describe(m, buf, need);
    fputs(buf, stdout);
    free(buf);
    kiln_model_free(m);
    return 0;
}

static int cmd_tokenize(int argc, char **argv) {
    const char *vocab = NULL, *model_path = NULL, *prompt = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--vocab") && i + 1 < argc) {
            vocab = argv[++i];
        } else if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) {
            model_path = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0' && !prompt) {
            fprintf(stderr, "kiln tokenize: unknown option '%s'\n", argv[i]);
            return 1;
        } else if (!prompt) {
            prompt = argv[i];
        } else {
            fprintf(stderr, "kiln tokenize: more than one PROMPT given (quote the prompt)\n");
            return 1;
        }
    }
    if (!prompt) {
        fprintf(stderr, "kiln tokenize: missing PROMPT\n");
        return 1;
    }
    kiln_tokenizer *tok = NULL;
    if (model_path) {
        kiln_model *m = NULL;
        if (kiln_model_load(model_path, NULL, &m)) return fail("tokenize");
        int rc = kiln_model_tokenizer(m, &tok);
        kiln_model_free(m);
        if (rc) return fail("tokenize");
    } else if (kiln_tokenizer_load(vocab, &tok)) {
        return fail("tokenize");
    }
    size_t n = 0;
    if (kiln_tokenize(tok, prompt, NULL, 0, &n)) {
        kiln_tokenizer_free(tok);
        return fail("tokenize");
    }
    int32_t *ids = malloc(sizeof(int32_t) * (n + 1));
    kiln_tokenize(tok, prompt, ids, n, &n);
    printf("[%d", KILN_TOKEN_BOS);
    for (size_t i = 0; i < n; i++) printf(", %d", ids[i]);
    printf(", %d]\n", KILN_TOKEN_EOS);
    free(ids);
    kiln_tokenizer_free(tok);
    return 0;
}

static int cmd_mkrandom(int argc, char **argv) {
    const char *arch = "sd15", *out = NULL;
    unsigned long long seed = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--arch") && i + 1 < argc) {
            arch = argv[++i];
        } else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            char *end;
            seed = strtoull(argv[++i], &end, 10);
            if (*end) {
                fprintf(stderr, "kiln mkrandom: --seed wants a non-negative integer, not '%s'\n", argv[i]);
                return 1;
            }
        } else {
            fprintf(stderr, "kiln mkrandom: unknown argument '%s'\n", argv[i]);
            return 1;
        }
    }
    if (!out) {
        fprintf(stderr, "kiln mkrandom: -o FILE.safetensors is required\n");
        return 1;
    }
    if (kiln_write_random_checkpoint(arch, out, seed)) return fail("mkrandom");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(stderr);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("kiln %s\n", kiln_version());
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) return usage(stdout);
    if (!strcmp(cmd, "info")) return cmd_info(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(cmd, "mkrandom")) return cmd_mkrandom(argc - 2, argv + 2);
    fprintf(stderr, "kiln: unknown command '%s' (try kiln help)\n", cmd);
    return 1;
}
