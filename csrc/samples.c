/* SPDX-License-Identifier: Apache-2.0 */
/* samples.c - see samples.h. */
#include "samples.h"

#include <string.h>

/* `v` in decimal at `out`; returns the digits written. */
static size_t put_decimal(uint64_t v, char *out)
{
	char digits[20];
	size_t n = 0;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (size_t i = 0; i < n; i++)
		out[i] = digits[n - 1 - i];
	return n;
}

size_t svcxdp_sample_lines(const char *text, const uint32_t *starts, const uint32_t *sel,
			   const uint64_t *values, size_t n, char *out)
{
	char *at = out;
	for (size_t k = 0; k < n; k++) {
		uint32_t line = sel[k];
		size_t len = starts[line + 1] - starts[line];
		memcpy(at, text + starts[line], len);
		at += len;
		at += put_decimal(values[k], at);
		*at++ = '\n';
	}
	return (size_t)(at - out);
}
