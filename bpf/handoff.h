/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * handoff.h — a frame the external entry point rewrote for another node and cannot send
 * itself, because its next hop has no neighbour entry yet. XDP cannot resolve a
 * neighbour. The stack could, but it never gets that far: the frame is source-NATed to
 * one of the node's own addresses, and the stack drops such a frame on input as a
 * martian (a real node does not set accept_local, and must not).
 *
 * The agent keeps the gateways behind the external interfaces resolved (managed
 * neighbours, agent/nexthops.py). A backend reached on-link has no gateway: its own
 * address is the next hop, one per endpoint (pod addresses in the node's subnet, as with
 * AWS's VPC CNI). Such a flow never started: every retransmission met the same missing
 * entry.
 *
 * So np_forward hands the frame to a tc program on the same device's ingress. The frame
 * carries a note in its XDP metadata, which only a program on this device can write;
 * svcxdp_handoff sends the frame with bpf_redirect_neigh. That takes the kernel's route
 * and neighbour output, which resolves the neighbour and queues the frame meanwhile.
 * Later frames find the entry and leave with XDP_TX as before. A driver without XDP
 * metadata, or a device without the tc program, leaves the frame to the stack, as
 * before this existed.
 */
#ifndef SVCXDP_HANDOFF_H
#define SVCXDP_HANDOFF_H

#include <uapi/linux/pkt_cls.h>   /* TC_ACT_OK */

#include "svcxdp.h"

/* XDP side: note the frame for svcxdp_handoff and pass it on. The caller has rewritten
 * the frame and decremented its TTL; the tc program only sends it. Counted
 * neigh_handoff when the note was written. */
static __always_inline int handoff_pass(struct xdp_md *ctx, __u32 ifindex, struct events *ev)
{
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct svcxdp_handoff)) < 0)
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	struct svcxdp_handoff *h = (void *)(long)ctx->data_meta;
	if ((void *)(h + 1) > data)
		return XDP_PASS;
	h->magic = SVCXDP_HANDOFF_MAGIC;
	h->ifindex = ifindex;
	ev->extra = SVCXDP_CNT_NEIGH_HANDOFF;
	return XDP_PASS;
}

/* The helper with its four arguments: the prototype bcc 0.26 declares lacks `plen`, so
 * a call through it leaves `flags` to whatever the register holds. */
static long (*handoff_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				      __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* tc ingress side: a noted frame goes out with the kernel's neighbour resolution (no
 * next hop given: the kernel routes the frame's destination itself); any other frame
 * goes on into the stack untouched. */
static __always_inline int handoff_take(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	struct svcxdp_handoff *h = (void *)(long)skb->data_meta;
	if ((void *)(h + 1) > data || h->magic != SVCXDP_HANDOFF_MAGIC)
		return TC_ACT_OK;
	return handoff_redirect_neigh(h->ifindex, NULL, 0, 0);
}

#endif /* SVCXDP_HANDOFF_H */
