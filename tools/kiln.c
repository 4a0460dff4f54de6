/* kiln.c — the command-line interface: generate, build, serve, info, tokenize, bench, mkrandom. */
#include <stdio.h>
#include <string.h>

#include "kiln.h"

static int usage(FILE *f) {
    fprintf(f, "usage: kiln <command> [options]\n"
               "commands:\n"
               "  info FILE                 describe a checkpoint or diffusers folder\n"
               "  tokenize [--vocab F | -m MODEL] PROMPT   print CLIP token ids as JSON\n"
               "  version                   print the version\n");
    return f == stderr ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage(stderr);
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("kiln %s\n", kiln_version());
        return 0;
    }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) return usage(stdout);
    fprintf(stderr, "kiln: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
