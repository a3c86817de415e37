/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * handoff.h — a frame the external entry point rewrote and cannot send itself, because
 * its next hop has no neighbour entry yet. XDP cannot resolve a neighbour. The stack
 * could, but for these frames it never gets that far: a frame that carries one of the
 * node's own addresses as its source (source-NATed for another node, or an answer
 * translated back to a client from a NodePort, a LoadBalancer IP or an externalIP the
 * node holds, primary or secondary) is dropped on input as a martian (a real node does
 * not set accept_local, and must not).
 *
 * Handed on: a frame from the route's own source address, and any frame leaving by the
 * interface it came in on (an answer from a secondary address or an LB IP leaves that
 * way; the flow's later frames leave there with XDP_TX, so all of them skip the stack).
 * A frame to another device still goes to the stack as before: there the flow's later
 * frames go too when that device is no redirect target (always, in the stack-forwarding
 * build), and the stack fragments or answers a frame too large for that device, which
 * this path does not check. Most keep the client's address; an answer whose route to
 * the client leaves by another interface than the backend's answer came in on (a node
 * with separate cluster and client networks) carries a node address, and the stack
 * drops it, with or without a neighbour entry: not served (docs/architecture.md).
 *
 * The agent keeps the gateways behind the external interfaces resolved (managed
 * neighbours, agent/nexthops.py). A backend reached on-link has no gateway: its own
 * address is the next hop, one per endpoint (pod addresses in the node's subnet, as with
 * AWS's VPC CNI). Such a flow never started: every retransmission met the same missing
 * entry.
 *
 * So np_forward hands the frame to a tc program on the same device's ingress. The frame
 * carries a note in its XDP metadata (struct svcxdp_handoff, keyed with the dataplane's
 * secret seed); svcxdp_handoff finds it and sends the frame with bpf_redirect_neigh.
 * That takes the kernel's route and neighbour output, which resolves the neighbour and
 * queues the frame meanwhile. Later frames find the entry and leave with XDP_TX as before.
 * The tc program only reads the note: a write to the frame would make the verifier
 * unclone every cloned packet on the hook first (a packet socket open: tcpdump, DHCP).
 *
 * A driver without XDP metadata in native mode (the in-tree ENA driver among them) fails
 * the note: the frame goes to the stack untouched, counted neigh_no_meta, which drops it
 * if it carries a node's address; generic mode carries metadata on every driver. On a
 * device without the tc program noted frames meet the stack the same way (their TTL
 * already one less): neigh_noted counts the notes, neigh_handoff the frames tc sent.
 * The tc program returns TC_ACT_UNSPEC for every other frame, so filters after it on the
 * same hook still run; one before it that ends the chain (or a tcx program that does)
 * keeps it from seeing the note.
 */
#ifndef SVCXDP_HANDOFF_H
#define SVCXDP_HANDOFF_H

#include <uapi/linux/pkt_cls.h>   /* TC_ACT_UNSPEC */

#include "svcxdp.h"
#include "maps.h"
#include "fib.h"

/* The notes' key: the dataplane's secret seed (0: none yet, no note). */
static __always_inline __u32 handoff_key(void)
{
	__u32 zero = 0;
	__u32 *seed = ct_set_seed.lookup(&zero);
	return seed ? *seed : 0;
}

/* XDP side: note the frame for svcxdp_handoff, decrement its TTL (the stack's forwarding
 * would have) and pass it on. Without room for the note the frame is passed as it is. */
static __always_inline int handoff_pass(struct xdp_md *ctx, __u32 ifindex, struct events *ev)
{
	__u32 key = handoff_key();
	if (!key)
		return XDP_PASS;
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct svcxdp_handoff)) < 0) {
		ev->extra = SVCXDP_CNT_NEIGH_NO_META;
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct svcxdp_handoff *h = (void *)(long)ctx->data_meta;
	struct iphdr *ip = data + sizeof(struct ethhdr);   /* (np_forward's: untagged) */
	if ((void *)(h + 1) > data || (void *)(ip + 1) > data_end) {
		/* (not met: np_forward read this header) the room given back unwritten */
		bpf_xdp_adjust_meta(ctx, (int)sizeof(struct svcxdp_handoff));
		return XDP_PASS;
	}
	h->key = key;
	h->ifindex = ifindex;
	ip_decrease_ttl(ip);
	ev->extra = SVCXDP_CNT_NEIGH_NOTED;
	return XDP_PASS;
}

/* The helper with its four arguments: the prototype bcc 0.26 declares lacks `plen`, so
 * a call through it leaves `flags` to whatever the register holds. */
static long (*handoff_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				      __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* tc ingress side: a noted frame goes out with the kernel's neighbour resolution (no
 * next hop given: the kernel routes the frame's destination itself on that device),
 * counted neigh_handoff; any other frame goes on, to the next filter and the stack. */
static __always_inline int handoff_take(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	struct svcxdp_handoff *h = (void *)(long)skb->data_meta;
	if ((void *)(h + 1) > data)
		return TC_ACT_UNSPEC;
	__u32 key = handoff_key();
	if (!key || h->key != key)
		return TC_ACT_UNSPEC;
	counters_bump(SVCXDP_CNT_NEIGH_HANDOFF);
	return handoff_redirect_neigh(h->ifindex, NULL, 0, 0);
}

#endif /* SVCXDP_HANDOFF_H */
