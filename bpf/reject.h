/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * reject.h — answers the program sends back out of the interface a frame came in on
 * (XDP_TX): for a service that has no endpoints, as kube-proxy's REJECT rules do, a
 * TCP RST or an ICMP port unreachable, so the client sees "connection refused" at
 * once; and for a translated frame too large for its way out with DF set, the ICMP
 * "fragmentation needed" that the node's stack would send, but quoting the frame as
 * its sender sent it (frag_answerable, frag_needed_reply). A reject spends from its
 * CPU's budget (reject_allowed), as the kernel rate-limits its ICMP errors; "fragmentation
 * needed" does not, as the kernel never limits those (icmpv4_mask_allow: "Don't limit
 * PMTU discovery"), and it is smaller than the frame it answers.
 * The replies are built from scratch at fixed offsets, so IP or TCP options in the
 * offending packet do not matter.
 */
#ifndef SVCXDP_REJECT_H
#define SVCXDP_REJECT_H

#include "csum.h"
#include "conntrack.h"

#define REPLY_TTL 64

#ifndef SVCXDP_REJECT_RATE
#define SVCXDP_REJECT_RATE SVCXDP_DEFAULT_REJECT_RATE
#endif
#ifndef SVCXDP_REJECT_BURST
#define SVCXDP_REJECT_BURST SVCXDP_DEFAULT_REJECT_BURST
#endif
#if SVCXDP_REJECT_RATE > SVCXDP_MAX_REJECT_RATE
#error "SVCXDP_REJECT_RATE: a token must be a whole number of nanoseconds"
#endif
#define REJECT_TOKEN_NS (SVCXDP_NSEC_PER_SEC / SVCXDP_REJECT_RATE)

/* May this CPU send one more reject now? A token bucket (the kernel's ICMP limit, see
 * SVCXDP_DEFAULT_REJECT_RATE): a token earned every REJECT_TOKEN_NS, at most
 * SVCXDP_REJECT_BURST kept, one spent per answer. The time earned up to advances by
 * whole tokens only, so no fraction of one is lost between answers; a full bucket
 * earns nothing, so its time is then the present. Per CPU: no other CPU writes it, and
 * a flood spread over the CPUs shares no cache line (so a node answers up to its CPUs
 * times the rate, where the kernel's global limit is one per node). `now` is the
 * packet's coarse clock (jiffies, as the kernel's limiter counts): tokens come a tick's
 * worth at a time, none lost. */
static __always_inline int reject_allowed(__u64 now)
{
	__u32 zero = 0;
	struct reject_budget *b = reject_budget.lookup(&zero);
	if (!b)
		return 0;
	__u64 earned = (now - b->earned_ns) / REJECT_TOKEN_NS;
	if (earned) {
		if (b->tokens + earned >= SVCXDP_REJECT_BURST) {
			b->tokens = SVCXDP_REJECT_BURST;
			b->earned_ns = now;
		} else {
			b->tokens += earned;
			b->earned_ns += earned * REJECT_TOKEN_NS;
		}
	}
	if (!b->tokens)
		return 0;
	b->tokens--;
	return 1;
}

/* The verifier forbids arithmetic on data_end, so the frame length comes from
 * bpf_xdp_get_buff_len() (Linux 5.18), which bcc 0.26 does not declare. */
static __u64 (*xdp_buff_len)(struct xdp_md *ctx) = (void *)188; /* BPF_FUNC_xdp_get_buff_len */
#define ICMP_QUOTE_MAX_WORDS 38  /* (8 + 60 + 8) / 2: ICMP header + max IP header + 8 */

/* May a reject answer this frame? Only a unicast one from a single host (RFC 1122
 * 3.2.2, 4.2.3.10): never to a link-layer broadcast or multicast destination (the
 * answer's source MAC would be that group), nor to a source of 0/8, 127/8 or 224/3
 * (multicast, class E, the broadcast address) — spoofed, they would turn a service
 * without endpoints into a reflector. */
static __always_inline int reject_answerable(const struct ethhdr *eth, __be32 saddr)
{
	__u8 first = ((const __u8 *)&saddr)[0];
	return !(eth->h_dest[0] & 1) && first != 0 && first != 127 && first < 224;
}


static __always_inline void swap_macs(struct ethhdr *eth)
{
	unsigned char tmp[ETH_ALEN];
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

static __always_inline void fill_reply_ip(struct iphdr *ip, __u8 proto, __u16 tot_len,
					  __be32 saddr, __be32 daddr)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(tot_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = REPLY_TTL;
	ip->protocol = proto;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = ipv4_hdr_csum(ip);
}

/* l3_off is 14 or 18 (one VLAN tag). */
static __always_inline int reject_tcp(struct xdp_md *ctx, __u32 l3_off, struct iphdr *ip,
				      struct tcphdr *tcp)
{
	if ((void *)(tcp + 1) > (void *)(long)ctx->data_end)
		return XDP_DROP; /* re-proven: the verifier lost the range on the way here */
	__u8 in_flags = ((__u8 *)tcp)[13];
	if (in_flags & TCPF_RST)
		return XDP_DROP; /* never answer a RST (ct_may_start drops one before: a guard) */

	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__be16 sport = tcp->source, dport = tcp->dest;
	__u32 in_seq = bpf_ntohl(tcp->seq), in_ack = bpf_ntohl(tcp->ack_seq);
	__u32 paylen = bpf_ntohs(ip->tot_len) - ip->ihl * 4 - tcp->doff * 4;

	/* RFC 793 reset generation: echo the peer's ACK as our sequence number, or
	 * acknowledge everything the segment occupied. */
	__u32 seq = 0, ack = 0;
	__u8 flags = TCPF_RST;
	if (in_flags & TCPF_ACK) {
		seq = in_ack;
	} else {
		ack = in_seq + paylen + ((in_flags & TCPF_SYN) ? 1 : 0) + ((in_flags & TCPF_FIN) ? 1 : 0);
		flags |= TCPF_ACK;
	}

	int cur = xdp_buff_len(ctx);
	int want = l3_off + sizeof(struct iphdr) + sizeof(struct tcphdr);
	if (bpf_xdp_adjust_tail(ctx, want - cur))
		return XDP_DROP;

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (l3_off > 18)
		return XDP_DROP;
	struct ethhdr *eth = data;
	struct iphdr *nip = data + l3_off;
	struct tcphdr *ntcp = (void *)(nip + 1);
	if ((void *)(eth + 1) > end || (void *)(ntcp + 1) > end)
		return XDP_DROP;

	swap_macs(eth);
	fill_reply_ip(nip, IPPROTO_TCP, sizeof(*nip) + sizeof(*ntcp), daddr, saddr);

	__builtin_memset(ntcp, 0, sizeof(*ntcp));
	ntcp->source = dport;
	ntcp->dest = sport;
	ntcp->seq = bpf_htonl(seq);
	ntcp->ack_seq = bpf_htonl(ack);
	ntcp->doff = 5;
	((__u8 *)ntcp)[13] = flags;

	/* Pseudo header + header; words summed as they sit in memory. */
	__u32 sum = (daddr & 0xffff) + (daddr >> 16) + (saddr & 0xffff) + (saddr >> 16);
	sum += bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(*ntcp));
	__u16 *w = (__u16 *)ntcp;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	ntcp->check = ~csum_fold32(sum);
	return XDP_TX;
}

/* ICMP destination unreachable (`code`) quoting the IP header and the first 8 bytes of
 * the datagram (RFC 792); `mtu`: the next hop's MTU of a "fragmentation needed" (RFC
 * 1191), else 0. `sent`: the frame was translated, and the quote says what its sender
 * sent (the quoted transport checksum stays the translated one: receivers match a
 * quote by addresses and ports, icmp.h); NULL: the frame is as it was sent. Grows the
 * head by 28 bytes for the new IP and ICMP headers, then trims the tail to the quote. */
static __always_inline int icmp_unreach_reply(struct xdp_md *ctx, __u32 l3_off, __u32 ihl_bytes,
					      __u8 code, __u16 mtu, const struct sent_tuple *sent)
{
	const int grow = sizeof(struct iphdr) + sizeof(struct icmphdr);
	if (l3_off > 18 || ihl_bytes > 60)
		return XDP_DROP;
	if (bpf_xdp_adjust_head(ctx, -grow))
		return XDP_DROP;

	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	if (data + grow + 18 > end)
		return XDP_DROP;
	/* Move the L2 header (with its VLAN tag, if any) to the new front. */
	if (l3_off == 18)
		__builtin_memcpy(data, data + grow, 18);
	else
		__builtin_memcpy(data, data + grow, 14);

	__u32 quote = ihl_bytes + 8;
	int cur = xdp_buff_len(ctx);
	int want = l3_off + grow + quote;
	if (want > cur)
		return XDP_DROP;
	if (bpf_xdp_adjust_tail(ctx, want - cur))
		return XDP_DROP;

	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *nip = data + l3_off;
	struct icmphdr *icmp = (void *)(nip + 1);
	struct iphdr *orig = (void *)(icmp + 1);
	if ((void *)(eth + 1) > end || (void *)(orig + 1) > end)
		return XDP_DROP;
	if (sent) {
		__be16 *ports = (void *)orig + ihl_bytes;
		if ((void *)(ports + 2) > end)
			return XDP_DROP;
		csum_replace4(&orig->check, orig->saddr, sent->src);
		csum_replace4(&orig->check, orig->daddr, sent->dst);
		orig->saddr = sent->src;
		orig->daddr = sent->dst;
		ports[0] = sent->sport;
		ports[1] = sent->dport;
	}

	swap_macs(eth);
	fill_reply_ip(nip, IPPROTO_ICMP, grow + quote, orig->daddr, orig->saddr);
	icmp->type = ICMP_DEST_UNREACH;
	icmp->code = code;
	icmp->checksum = 0;
	icmp->un.frag.__unused = 0;
	icmp->un.frag.mtu = bpf_htons(mtu);

	__u32 sum = 0;
	__u16 *w = (__u16 *)icmp;
	__u32 nwords = (sizeof(*icmp) + quote) / 2;
	/* Unrolled: each word sits at a constant offset the verifier can check. */
#pragma unroll
	for (int i = 0; i < ICMP_QUOTE_MAX_WORDS; i++) {
		if (i < nwords) {
			if ((void *)(w + i + 1) > end)
				return XDP_DROP;
			sum += w[i];
		}
	}
	icmp->checksum = ~csum_fold32(sum);
	return XDP_TX;
}

/* UDP to a service without endpoints: port unreachable. */
static __always_inline int reject_udp(struct xdp_md *ctx, __u32 l3_off, __u32 ihl_bytes)
{
	return icmp_unreach_reply(ctx, l3_off, ihl_bytes, ICMP_PORT_UNREACH, 0, NULL);
}

/* A translated frame (untagged) that the FIB found larger than the MTU of its way out.
 * Without DF it goes to the stack, which fragments it. With DF the stack would drop it
 * and send "fragmentation needed" quoting the translated frame — a backend's address
 * and port the sender never used, so it could not match the error to its socket and
 * would resend the same size for ever (a UDP sender; TCP mostly avoids it through the
 * MSS). kube-proxy's conntrack translates that error back; here the program answers
 * itself (frag_needed_reply), quoting `sent`: unless the source is one a reject would
 * not answer, or the frame has IP options (to the stack: a quote of constant length
 * keeps the answer's checks few, and it is reached from many verifier states), or the
 * frame is larger than the device it came in on allows — then it was never a frame on
 * the wire but an aggregate (generic XDP runs after GRO, and a veth passes a pod's TSO
 * segments whole: up to 64 KB with DF), which the stack segments on its way out. */
static __always_inline int frag_answerable(struct xdp_md *ctx, const struct ethhdr *eth,
					   const struct iphdr *ip, const struct sent_tuple *sent)
{
	__u32 wire_mtu = 0;   /* 0: check the frame's own length against the ingress device */
	return (ip->frag_off & bpf_htons(IP_DF)) && ip->ihl == 5 && reject_answerable(eth, sent->src) &&
	       bpf_check_mtu(ctx, 0, &wire_mtu, 0, 0) == BPF_MTU_CHK_RET_SUCCESS;
}

/* RFC 1191's "fragmentation needed" back to the sender of the frame, `mtu` the next
 * hop's MTU (the frame's IP header has no options: frag_answerable). */
static __always_inline int frag_needed_reply(struct xdp_md *ctx, const struct sent_tuple *sent,
					     __u16 mtu)
{
	return icmp_unreach_reply(ctx, ETH_HLEN, sizeof(struct iphdr), ICMP_FRAG_NEEDED, mtu, sent);
}

#endif /* SVCXDP_REJECT_H */
