/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * otherhost.h — frames the external interface received for another host.
 *
 * A switch floods a unicast frame to every port while it has not learnt where its
 * destination MAC address lives (after its table aged out, or before the host ever
 * sent), and a Linux bridge does the same; a veth takes every frame. XDP runs before
 * the stack looks at the destination MAC address, so every node on the segment saw a
 * client's SYN to a LoadBalancer IP or externalIP (addresses every node serves), and
 * every node answered it: the client met two SYN-ACKs and reset its connection (found
 * by the lab, whose bridge floods until it has heard from a node). The stack marks such
 * a frame PACKET_OTHERHOST and drops it; so does kube-proxy's node.
 *
 * The agent writes each external interface's own address into ext_macs before it
 * attaches there; a unicast frame for any other goes to the stack untouched, counted
 * pass_other_host. Broadcast and multicast frames (the group bit) are served as before:
 * the stack takes them in too. An interface whose address is not known (0) is not
 * checked, nor is one the agent has not attached.
 */
#ifndef SVCXDP_OTHERHOST_H
#define SVCXDP_OTHERHOST_H

#include "svcxdp.h"
#include "maps.h"

/* Is this a unicast frame for a MAC address other than the receiving interface's?
 * Written so that every way out leaves the stack as every other does (the key first,
 * the frame's address read into registers, not a stack slot): ways out that differ in
 * it reach the entry point's body as states the verifier walks apart (~100,000
 * instructions more for svcxdp_external). */
static __always_inline int for_another_host(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u64 *own = ext_macs.lookup(&ifindex);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if (!own || !*own || (void *)(eth + 1) > data_end || (eth->h_dest[0] & 1))
		return 0;
	/* three u16 loads: the header is only 2-byte aligned (the agent's mac_key() mirrors
	 * this in the host's byte order) */
	__u16 *d = (__u16 *)eth->h_dest;
	__u64 dest = (__u64)d[0] | (__u64)d[1] << 16 | (__u64)d[2] << 32;
	return dest != *own;
}

#endif /* SVCXDP_OTHERHOST_H */
