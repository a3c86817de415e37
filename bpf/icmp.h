/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * icmp.h — ICMP errors that quote a translated flow are translated too, so that
 * the client learns "port unreachable" or "fragmentation needed" about the VIP it
 * talked to, and the backend about the client it really talks to.
 * Quoted headers with IP options are left alone (passed untranslated).
 * The quoted transport checksum is not updated: receivers match the quote by
 * addresses and ports and do not verify it.
 */
#ifndef SVCXDP_ICMP_H
#define SVCXDP_ICMP_H

#include "nat.h"
#include "conntrack.h"

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
}

/* Rewrite one quoted address + port and keep both the quoted IP checksum and the
 * ICMP checksum (which covers the quote) right. */
static __always_inline void icmp_rewrite_quote(struct icmphdr *icmp, struct iphdr *in,
					       __be32 *addr, __be16 *port,
					       __be32 new_addr, __be16 new_port)
{
	__be32 old_addr = *addr;
	__u16 old_check = in->check;
	*addr = new_addr;
	csum_replace4(&in->check, old_addr, new_addr);
	csum_replace4(&icmp->checksum, old_addr, new_addr);
	csum_replace2(&icmp->checksum, old_check, in->check);
	csum_replace2(&icmp->checksum, *port, new_port);
	*port = new_port;
}

static __always_inline void ip_rewrite_addr(struct iphdr *ip, __be32 *addr, __be32 new_addr)
{
	__be32 old = *addr;
	*addr = new_addr;
	csum_replace4(&ip->check, old, new_addr);
}

/* Errors about source-NATed external flows (nodeport.h), on the external entry point.
 * From the backend's side, about node:snat_port -> backend: the quote becomes
 * client -> VIP and the error goes to the client. From the client's side, about a reply
 * VIP -> client: the quote becomes backend -> node:snat_port and the error goes to the
 * backend from the node's address. Either is sent to the address its quote came from
 * (the node's, the VIP); one sent elsewhere is no error about the flow and is not
 * forwarded. Returns -1 when the quote is no such flow. */
static __always_inline int icmp_snat(struct iphdr *ip, struct icmphdr *icmp, struct iphdr *in,
				     __be16 *ports, struct events *ev)
{
	struct ct_key k;
	ct_key_set(&k, in->daddr, in->saddr, ports[1], ports[0], in->protocol, SVCXDP_CT_DIR_SNAT);
	struct ct_value buf;
	int copied;
	struct ct_value *v = ct_lookup_external(&k, &buf, &copied);
	if (v && ip->daddr == in->saddr) {
		__be32 backend = in->daddr;
		icmp_rewrite_quote(icmp, in, &in->saddr, &ports[0], v->peer_ip, v->peer_port);
		icmp_rewrite_quote(icmp, in, &in->daddr, &ports[1], v->nat_ip, v->nat_port);
		ip_rewrite_addr(ip, &ip->daddr, v->peer_ip);
		if (ip->saddr == backend)
			ip_rewrite_addr(ip, &ip->saddr, v->nat_ip);
		ev->main = SVCXDP_CNT_ICMP_NAT;
		return SVCXDP_VERDICT_NP_OUT;
	}
	ct_key_set(&k, in->daddr, in->saddr, ports[1], ports[0], in->protocol, SVCXDP_CT_DIR_FORWARD);
	v = ct_lookup_external(&k, &buf, &copied);
	if (!v || !(v->flags & SVCXDP_CT_F_SNAT) || ip->daddr != in->saddr)
		return -1;
	icmp_rewrite_quote(icmp, in, &in->saddr, &ports[0], v->nat_ip, v->nat_port);
	icmp_rewrite_quote(icmp, in, &in->daddr, &ports[1], v->peer_ip, v->peer_port);
	ip_rewrite_addr(ip, &ip->daddr, v->nat_ip);
	ip_rewrite_addr(ip, &ip->saddr, v->peer_ip);
	ev->main = SVCXDP_CNT_ICMP_NAT;
	return SVCXDP_VERDICT_NP_OUT;
}

/* The quote of an ICMP error about TCP or UDP, without IP options: its IP header and
 * ports (*in, *ports). 0 for any other message, a quote cut short, or one of a later
 * fragment (what follows its header is payload, not ports). l4_len: the ICMP
 * message's length by the IP header; bytes past it (Ethernet padding) are never read
 * as part of the quote. */
static __always_inline int icmp_error_quote(struct icmphdr *icmp, void *end, __u32 l4_len,
					    struct iphdr **in_out, __be16 **ports_out)
{
	if (!icmp_is_error(icmp->type))
		return 0;
	struct iphdr *in = (void *)(icmp + 1);
	if ((void *)(in + 1) > end || in->ihl != 5)
		return 0;
	if ((in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP) || ip_is_later_fragment(in))
		return 0;
	__be16 *ports = (void *)(in + 1);
	if ((void *)(ports + 2) > end || l4_len < sizeof(*icmp) + sizeof(*in) + 2 * sizeof(__be16))
		return 0;
	*in_out = in;
	*ports_out = ports;
	return 1;
}

/* An error from the backend's side (the backend itself, or a hop on its way) about
 * client -> backend, the flow it quotes found as its reply would be: the quote becomes
 * client -> VIP, and an outer source that is the backend the VIP. 1 when translated. */
static __always_inline int icmp_from_backend(struct iphdr *ip, struct icmphdr *icmp,
					     struct iphdr *in, __be16 *ports)
{
	struct reply_match m;
	if (!ct_match_reply(in->daddr, ports[1], in->saddr, ports[0], in->protocol, &m))
		return 0;
	__be32 backend_ip = in->daddr;
	icmp_rewrite_quote(icmp, in, &in->daddr, &ports[1], m.vip, m.vport);
	if (ip->saddr == backend_ip) {
		ip->saddr = m.vip;
		csum_replace4(&ip->check, backend_ip, m.vip);
	}
	return 1;
}

/* `external`: the external entry point, where quotes of source-NATed flows are
 * translated too (and sent on by its tail). */
static __always_inline int handle_icmp(struct cursor *c, struct iphdr *ip, __u32 l4_len,
				       int external, struct events *ev)
{
	struct icmphdr *icmp = c->pos;
	if ((void *)(icmp + 1) > c->end || l4_len < sizeof(*icmp)) {
		ev->main = SVCXDP_CNT_DROP_MALFORMED;
		return XDP_DROP;
	}
	struct iphdr *in;
	__be16 *ports;
	if (!icmp_error_quote(icmp, c->end, l4_len, &in, &ports))
		goto pass;

	if (external) {
		int verdict = icmp_snat(ip, icmp, in, ports, ev);
		if (verdict >= 0)
			return verdict;
	}

	if (icmp_from_backend(ip, icmp, in, ports)) {
		ev->main = SVCXDP_CNT_ICMP_NAT;
		return XDP_PASS;
	}

	/* Error from the client's side about a reply VIP -> client: the quote's
	 * reverse is the forward entry holding the backend. */
	struct ct_key k;
	ct_key_set(&k, in->daddr, in->saddr, ports[1], ports[0], in->protocol, SVCXDP_CT_DIR_FORWARD);
	struct ct_value buf;   /* only read here */
	int copied;
	struct ct_value *v = ct_lookup(&k, &buf, &copied);
	if (v) {
		__be32 vip = in->saddr;
		icmp_rewrite_quote(icmp, in, &in->saddr, &ports[0], v->nat_ip, v->nat_port);
		if (ip->daddr == vip) {
			ip->daddr = v->nat_ip;
			csum_replace4(&ip->check, vip, v->nat_ip);
		}
		ev->main = SVCXDP_CNT_ICMP_NAT;
		return XDP_PASS;
	}
pass:
	ev->main = SVCXDP_CNT_PASS_NON_SERVICE;
	return XDP_PASS;
}

#endif /* SVCXDP_ICMP_H */
