/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * local_reply.h — the answers of a backend at one of the node's own addresses (a
 * hostNetwork pod: the `kubernetes` Service's API server on a control-plane node, an
 * ingress controller on the host network). XDP DNATs a client's packet to such a
 * backend and the node's stack delivers it locally; the answer is made by the node and
 * leaves by a device's egress, where no XDP program runs. Untranslated, it reaches the
 * client (a pod of this node, or a client from outside through this node's NodePort)
 * from an address it never talked to, and is dropped or reset. kube-proxy's conntrack
 * translates it in the node's output path; here a tc egress program on the devices the
 * XDP entry points serve (svcxdp_local_reply) turns its source back into the service's.
 *
 * Only the node's own packets are looked at (skb->ingress_ifindex 0: a received one
 * was translated by XDP as it came in), and of those only one from a backend of a
 * tracked flow (ct_match_reply: a hash lookup settles the rest). The rewrite goes
 * through the kernel's checksum helpers: a packet the node made usually carries a
 * partial checksum (CHECKSUM_PARTIAL, finished by the device), which nat.h's
 * incremental update of a complete one would corrupt. The headers of a packet the node
 * makes sit in the socket buffer's linear part; one whose do not is left alone. Later
 * fragments of a datagram are translated from its first fragment's record, as on the
 * XDP path.
 *
 * ICMP errors the node's stack sends about a translated flow are translated too (the
 * XDP path's icmp_from_backend; their checksums are complete, written in place): a
 * local backend's port unreachable, and the stack's own errors about a frame XDP
 * translated and passed to it (time exceeded, "fragmentation needed" where the program
 * does not answer itself, reject.h) — they quoted the backend's tuple, which the client
 * cannot match.
 */
#ifndef SVCXDP_LOCAL_REPLY_H
#define SVCXDP_LOCAL_REPLY_H

#include <uapi/linux/pkt_cls.h>   /* TC_ACT_UNSPEC */

#include "csum.h"
#include "conntrack.h"
#include "icmp.h"
#include "parse.h"

/* The transport checksum of a GSO packet (several segments the device, or the software
 * segmentation before it, cuts out of one socket buffer) holds only the pseudo-header's sum:
 * each segment's header and payload are summed in as it is cut. The helpers update it so
 * only when skb->ip_summed says CHECKSUM_PARTIAL; a UDP_SEGMENT send out of a device
 * without TX checksum offload is left CHECKSUM_NONE by udp_send_skb() (the software
 * segmentation completes it all the same, __udp_gso_segment), and the helpers then update
 * it as a complete checksum: an address change applied backwards, a port change (which
 * the segmentation sums itself) subtracted — every segment arrives with a bad checksum.
 * ip_summed is not readable from a program: a UDP GSO packet's field is updated here as
 * the partial sum it always is (what bpf_l4_csum_replace does with CHECKSUM_PARTIAL).
 * TCP's GSO packets are always CHECKSUM_PARTIAL (and tcp4_gso_segment rewrites the field
 * of any other), so the helpers serve them. */
static __always_inline void gso_csum_replace4(struct __sk_buff *skb, __u32 csum_off, __be32 from, __be32 to)
{
	__u16 check;
	if (bpf_skb_load_bytes(skb, csum_off, &check, sizeof(check)))
		return;
	csum_pseudo_replace4(&check, from, to);
	bpf_skb_store_bytes(skb, csum_off, &check, sizeof(check), 0);
}

/* Replace the 4-byte source address at l3_off (and the transport checksum at csum_off,
 * when there is one: a later fragment has none) through the helpers; `gso`: the
 * checksum is a UDP GSO packet's pseudo-header sum, updated as such (above). */
static __always_inline void local_reply_src(struct __sk_buff *skb, __u32 l3_off, __u32 csum_off,
					    __u64 l4_flags, bool gso, __be32 from, __be32 to)
{
	if (csum_off && gso)
		gso_csum_replace4(skb, csum_off, from, to);
	else if (csum_off)
		bpf_l4_csum_replace(skb, csum_off, from, to, l4_flags | BPF_F_PSEUDO_HDR | sizeof(to));
	bpf_l3_csum_replace(skb, l3_off + __builtin_offsetof(struct iphdr, check), from, to, sizeof(to));
	bpf_skb_store_bytes(skb, l3_off + __builtin_offsetof(struct iphdr, saddr), &to, sizeof(to), 0);
}

static __always_inline int local_reply(struct __sk_buff *skb)
{
	if (skb->ingress_ifindex)
		return TC_ACT_UNSPEC;
	void *data = (void *)(long)skb->data;
	struct cursor c = { .pos = data, .end = (void *)(long)skb->data_end };
	struct ethhdr *eth;
	struct iphdr *ip;
	if (parse_eth(&c, &eth) != ETH_P_IP_BE)
		return TC_ACT_UNSPEC;
	__u32 l3_off = c.pos - data;
	int proto = parse_ipv4_header(&c, &ip);
	if (proto == IPPROTO_ICMP && !ip_is_fragment(ip)) {
		struct icmphdr *icmp = c.pos;
		struct iphdr *in;
		__be16 *ports;
		if ((void *)(icmp + 1) <= c.end &&
		    icmp_error_quote(icmp, c.end, bpf_ntohs(ip->tot_len) - ip->ihl * 4, &in, &ports) &&
		    icmp_from_backend(ip, icmp, in, ports))
			counters_bump(SVCXDP_CNT_ICMP_NAT);
		return TC_ACT_UNSPEC;
	}
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return TC_ACT_UNSPEC;
	if (ip_is_later_fragment(ip)) {
		struct frag_value *f = frag_translation(ip);
		if (!f || f->dir != SVCXDP_CT_DIR_REPLY || f->peer_ip)
			return TC_ACT_UNSPEC;
		local_reply_src(skb, l3_off, 0, 0, false, ip->saddr, f->nat_ip);
		counters_bump(SVCXDP_CNT_LOCAL_REVNAT);
		return TC_ACT_UNSPEC;
	}
	__u32 l4_off = l3_off + ip->ihl * 4;
	__be16 *ports = c.pos;
	__u8 tcp_flags = 0;
	__u32 csum_off;
	__u64 l4_flags = 0;
	bool gso = false;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = c.pos;
		if ((void *)(tcp + 1) > c.end)
			return TC_ACT_UNSPEC;
		tcp_flags = ((__u8 *)tcp)[13];
		csum_off = l4_off + __builtin_offsetof(struct tcphdr, check);
	} else {
		struct udphdr *udp = c.pos;
		if ((void *)(udp + 1) > c.end)
			return TC_ACT_UNSPEC;
		csum_off = l4_off + __builtin_offsetof(struct udphdr, check);
		l4_flags = BPF_F_MARK_MANGLED_0;   /* a zero UDP checksum stays zero */
		/* UDP_SEGMENT: a pseudo-header sum (above), never 0 (the kernel refuses GSO without
		 * a checksum); a zero one, "none", stays zero through the helpers' flag */
		gso = skb->gso_size != 0 && udp->check != 0;
	}
	struct reply_match m;
	if (!ct_match_reply(ip->saddr, ports[0], ip->daddr, ports[1], proto, &m))
		return TC_ACT_UNSPEC;
	if (!ct_reply_track(&m, bpf_ktime_get_coarse_ns(), proto, tcp_flags))
		return TC_ACT_UNSPEC;
	__be32 src = ip->saddr;
	__be16 sport = ports[0];
	/* Later fragments leave as this one does. */
	frag_record(ip, src, ip->daddr, m.vip, 0, SVCXDP_CT_DIR_REPLY);
	svc_account(m.v->svc_id, l3_off + bpf_ntohs(ip->tot_len), 0, 0);
	/* The helpers below may move the packet: nothing is read from it after them. */
	local_reply_src(skb, l3_off, csum_off, l4_flags, gso, src, m.vip);
	if (sport != m.vport) {
		if (!gso)   /* a GSO packet's port is summed by its segmentation */
			bpf_l4_csum_replace(skb, csum_off, sport, m.vport, l4_flags | sizeof(m.vport));
		bpf_skb_store_bytes(skb, l4_off, &m.vport, sizeof(m.vport), 0);
	}
	counters_bump(SVCXDP_CNT_LOCAL_REVNAT);
	return TC_ACT_UNSPEC;
}

#endif /* SVCXDP_LOCAL_REPLY_H */
