/* ftfy.h — the part of Python's ftfy.fix_text (ftfy 6.x, default settings) that A1111's CLIP
 * tokenizer applies to every prompt, on arrays of Unicode code points. */
#ifndef KILN_TEXT_FTFY_H
#define KILN_TEXT_FTFY_H

#include <stddef.h>
#include <stdint.h>

/* ftfy.fix_text(text) with its default configuration, except the mojibake detection
 * (fix_encoding), which is skipped: text is cut into lines; HTML entities are decoded unless a
 * line (or an earlier one) contains '<'; C1 controls -> Windows-1252, Latin ligatures split,
 * fullwidth/halfwidth forms -> normal width, curly quotes -> straight, line breaks -> "\n",
 * ANSI terminal escapes and control characters removed, NFC; repeated until nothing changes.
 * in: n code points (valid scalar values). *out: a malloc'd array (non-NULL) of *out_n.
 * Returns 0, or KILN_ENOMEM. */
int kiln_ftfy_fix_text(const uint32_t *in, size_t n, uint32_t **out, size_t *out_n);

#endif
