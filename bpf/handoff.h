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
 * So np_forward hands the frame to a tc program on the same device's ingress. It notes
 * the frame in `handoff_notes` (struct svcxdp_handoff, keyed by what of the frame GRO
 * leaves as it was) and passes it on; svcxdp_handoff finds the note and sends the frame
 * with bpf_redirect_neigh. That takes the kernel's route and neighbour output, which
 * resolves the neighbour and queues the frame meanwhile. Later frames find the entry and
 * leave with XDP_TX as before. The tc program only reads the frame: a write would make
 * the verifier unclone every cloned packet on the hook first (a packet socket open:
 * tcpdump, DHCP).
 *
 * Departure: the note used to ride in the frame's XDP metadata. The kernel build of
 * this project's machines (6.18.44-fc-v1300) refuses bpf_xdp_adjust_meta to XDP
 * programs, so the program did not load at all, and several native drivers (the
 * in-tree ENA driver among them) never gave metadata, so there no frame was handed on.
 * A map works on every kernel and driver. The cost falls on the tc side: every frame
 * there reads `handoff_last`, and only frames within a second of a note pay a hash
 * lookup. Frames of one key in flight together (a burst of one flow's datagrams that
 * all carry IPv4 id 0) share a note that counts them; tc takes one per frame. A merged
 * GRO frame matches its first segment's note; its other segments' notes go unused, and
 * age out (one second) or are reused.
 *
 * On a device without the tc program noted frames meet the stack as before (their TTL
 * already one less): neigh_noted counts the notes, neigh_handoff the frames tc sent,
 * neigh_note_failed the frames whose note could not be written (left untouched). The
 * tc program returns TC_ACT_UNSPEC for every other frame, so filters after it on the
 * same hook still run; one before it that ends the chain (or a tcx program that does)
 * keeps it from seeing the frame.
 */
#ifndef SVCXDP_HANDOFF_H
#define SVCXDP_HANDOFF_H

#include <uapi/linux/pkt_cls.h>   /* TC_ACT_UNSPEC */

#include "svcxdp.h"
#include "maps.h"
#include "fib.h"

/* A note's key (struct svcxdp_handoff_key), as XDP left the frame and tc sees it. Both
 * read the same bytes, so both agree whatever they hold: the L4 fields only after a
 * header without options, the sequence number only for TCP. */
static __always_inline void handoff_key_of(const struct iphdr *ip, const void *data_end,
					   struct svcxdp_handoff_key *k)
{
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->id = ip->id;
	k->protocol = ip->protocol;
	const __be32 *l4 = (const void *)(ip + 1);
	if (ip->ihl != 5 || (const void *)(l4 + 2) > data_end)
		return;
	k->ports = l4[0];
	if (ip->protocol == IPPROTO_TCP)
		k->seq = l4[1];
}

/* Whether a note written at `at` still stands at `now` (the coarse clock of both sides). */
static __always_inline int handoff_fresh(__u64 now, __u64 at)
{
	return (__s64)(now - at) <= (__s64)SVCXDP_HANDOFF_WINDOW_NS;
}

/* XDP side: note the frame for svcxdp_handoff (one more frame of its key on its way),
 * decrement its TTL (the stack's forwarding would have) and pass it on. A frame whose
 * note cannot be written is passed as it is. */
static __always_inline int handoff_pass(struct xdp_md *ctx, __u32 ifindex, struct events *ev)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);   /* (np_forward's: untagged) */
	__u32 zero = 0;
	__u64 *last = handoff_last.lookup(&zero);
	if (!last || (void *)(ip + 1) > data_end)
		return XDP_PASS;   /* (not met: an array's one entry; np_forward read this header) */
	struct svcxdp_handoff_key k = {};
	handoff_key_of(ip, data_end, &k);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct svcxdp_handoff *n = handoff_notes.lookup(&k);
	if (n && n->ifindex == ifindex) {
		/* Counted in place: replacing the element would free it at once (LRU), and a
		 * tc program on another CPU may still hold it. The time first, so tc never
		 * meets a count over a stale time. */
		int spent = (__s32)n->count <= 0 || !handoff_fresh(now, n->at);
		n->at = now;
		if (spent)
			n->count = 0;
		__sync_fetch_and_add(&n->count, 1);
	} else {
		struct svcxdp_handoff note = { .at = now, .ifindex = ifindex, .count = 1 };
		if (handoff_notes.update(&k, &note) < 0) {
			ev->extra = SVCXDP_CNT_NEIGH_NOTE_FAILED;
			return XDP_PASS;
		}
	}
	if (*last != now)
		*last = now;
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
	__u32 zero = 0;
	__u64 *last = handoff_last.lookup(&zero);
	if (!last || !*last)
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_coarse_ns();
	if (!handoff_fresh(now, *last))
		return TC_ACT_UNSPEC;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	if ((void *)(ip + 1) > data_end || eth->h_proto != ETH_P_IP_BE)
		return TC_ACT_UNSPEC;
	struct svcxdp_handoff_key k = {};
	handoff_key_of(ip, data_end, &k);
	struct svcxdp_handoff *n = handoff_notes.lookup(&k);
	if (!n || (__s32)n->count <= 0 || !handoff_fresh(now, n->at))
		return TC_ACT_UNSPEC;
	/* (a flow's frames meet tc on one CPU, as RPS steers by flow: no two take the
	 * same note's last frame at once) */
	__sync_fetch_and_add(&n->count, -1);
	counters_bump(SVCXDP_CNT_NEIGH_HANDOFF);
	return handoff_redirect_neigh(n->ifindex, NULL, 0, 0);
}

#endif /* SVCXDP_HANDOFF_H */
