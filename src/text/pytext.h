/* pytext.h — the few pieces of Python string semantics that A1111's prompt code relies on:
 * UTF-8 decoding, the regex classes \s \w \d of Python's `re` on str patterns (Unicode-aware),
 * and float(str) parsing. Used by the prompt parser and the extra-network tag parser so that
 * both read prompts the way A1111 (Python) does. Internal to src/text. */
#ifndef KILN_TEXT_PYTEXT_H
#define KILN_TEXT_PYTEXT_H

#include <stddef.h>
#include <stdint.h>

/* Decodes one UTF-8 code point at s[0..len). Returns its byte length (1..4) and stores the code
 * point in *cp, or returns 0 if the bytes there are not valid UTF-8 (or len == 0). */
int kiln_py_utf8_next(const char *s, size_t len, int32_t *cp);

/* 0 if s[0..len) is valid UTF-8; otherwise KILN_EINVAL with a message naming `what` and the
 * byte offset of the first bad byte. */
int kiln_py_check_utf8(const char *s, size_t len, const char *what);

/* Python str.isspace() (= `\s` in a str regex). */
int kiln_py_isspace(int32_t cp);
/* Python `\w` in a str regex: letters, numbers (str.isalnum()) and '_'. */
int kiln_py_isword(int32_t cp);
/* Python `\d` in a str regex (Unicode decimal digits, category Nd). Returns the digit value
 * 0..9, or -1 if cp is not a decimal digit. */
int kiln_py_digit(int32_t cp);

/* The code point ending just before byte offset `end` (which must be > 0 and on a code point
 * boundary of valid UTF-8). */
int32_t kiln_py_prev_cp(const char *s, size_t end);

/* Python float(s[0..len)): surrounding Unicode whitespace ignored, optional sign, decimal
 * digits (any script) with '_' between digits, optional '.', optional exponent, or
 * inf/infinity/nan. Correctly rounded, independent of the C locale. Returns 0 and the value,
 * or KILN_EINVAL (message: "could not convert string to float: '...'") when Python would raise
 * ValueError. */
int kiln_py_float(const char *s, size_t len, double *out);

/* Python int(s[0..len)) for base-10 text (whitespace, sign, digits of any script, '_' between
 * digits). KILN_EINVAL ("invalid literal for int()") otherwise or when outside int's range. */
int kiln_py_int(const char *s, size_t len, int *out);

#endif
