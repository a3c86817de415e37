/* SPDX-License-Identifier: Apache-2.0 */
/*
 * samples.h - sample lines of the Prometheus text exposition, filled in bulk (user
 * space only: the agent's /metrics, controlplane/agent/samples.py).
 *
 * A family's lines differ from one scrape to the next only in their values, so the
 * agent keeps each line's text up to its value (`name{labels} `) in one buffer, made
 * once per change, and the values are written in here: 100,000 lines a scrape cost a
 * copy and a number each, not a Python format step each.
 */
#ifndef SVCXDP_SAMPLES_H
#define SVCXDP_SAMPLES_H

#include <stddef.h>
#include <stdint.h>

/* Bytes a value and its newline take at most: a u64 has at most 20 digits. */
#define SVCXDP_SAMPLE_VALUE_MAX 21

/* For each k < n, writes line sel[k]'s text (text[starts[sel[k]]] up to
 * text[starts[sel[k] + 1]]), values[k] in decimal and a newline to `out`; returns the
 * bytes written. `out` must hold the selected lines' text plus SVCXDP_SAMPLE_VALUE_MAX
 * bytes a line, and every sel[k] must be below the number of lines (starts has one
 * entry more): the caller checks both. */
size_t svcxdp_sample_lines(const char *text, const uint32_t *starts, const uint32_t *sel,
			   const uint64_t *values, size_t n, char *out);

#endif /* SVCXDP_SAMPLES_H */
