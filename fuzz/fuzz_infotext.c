/* fuzz_infotext.c — libFuzzer target for the A1111 infotext parser and formatter: any text parses;
 * formatting the parsed pairs again and re-parsing gives the same pairs. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/infotext.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    kiln_infotext it;
    if (kiln_infotext_parse(text, &it) == 0) {
        kiln_infotext_kv *kv = calloc((size_t)it.n_params + 1, sizeof *kv);
        for (int i = 0; kv && i < it.n_params; i++) kv[i] = (kiln_infotext_kv){it.params[i].key, it.params[i].value};
        char *again = NULL;
        if (kv && kiln_infotext_format_kv(it.prompt, it.negative_prompt, kv, it.n_params, &again) == 0) {
            kiln_infotext it2;
            if (kiln_infotext_parse(again, &it2) == 0) kiln_infotext_free(&it2);
            free(again);
        }
        free(kv);
        kiln_infotext_free(&it);
    }
    free(text);
    return 0;
}
