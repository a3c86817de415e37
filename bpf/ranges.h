/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/* loadBalancerSourceRanges: the clients a LoadBalancer frontend takes new flows from.
 * Both entry points check a new flow against them before a backend is chosen (svcxdp.c
 * handle_service): the pods' on a LoadBalancer IP's cluster-scope twin, the external one
 * on the IP itself. The CIDRs sit in the `source_ranges` LPM trie, keyed by (svc_id,
 * CIDR) (controlplane/dataplane/source_ranges.py writes them). */
#ifndef SVCXDP_RANGES_H
#define SVCXDP_RANGES_H

#include "maps.h"

/* Is the client inside one of the frontend's CIDRs? */
static __always_inline int source_allowed(__u32 svc_id, __be32 client)
{
	struct src_range_key k = {};
	k.prefixlen = 64;
	k.svc_id = svc_id;
	k.addr = client;
	return source_ranges.lookup(&k) != NULL;
}

#endif /* SVCXDP_RANGES_H */
