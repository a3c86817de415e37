/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * parse.h — header-only packet parsing with bounds checks the verifier can follow.
 * Each parser advances a cursor and returns the next protocol, or -1 if the header
 * does not fit in the packet.
 */
#ifndef SVCXDP_PARSE_H
#define SVCXDP_PARSE_H

#define ETH_P_IP_BE 0x0008      /* htons(ETH_P_IP) */
#define ETH_P_8021Q_BE 0x0081   /* htons(ETH_P_8021Q) */
#define ETH_P_8021AD_BE 0xA888  /* htons(ETH_P_8021AD) */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

struct cursor {
	void *pos;
	void *end;
};

struct vlan_hdr_s {
	__be16 tci;
	__be16 encap_proto;
};

/* Ethernet plus at most one 802.1Q/802.1ad tag. Returns the inner ethertype
 * (network order) or -1. */
static __always_inline int parse_eth(struct cursor *c, struct ethhdr **eth_out)
{
	struct ethhdr *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return -1;
	c->pos = eth + 1;
	*eth_out = eth;
	__be16 proto = eth->h_proto;
	if (proto == ETH_P_8021Q_BE || proto == ETH_P_8021AD_BE) {
		struct vlan_hdr_s *vh = c->pos;
		if ((void *)(vh + 1) > c->end)
			return -1;
		c->pos = vh + 1;
		proto = vh->encap_proto;
	}
	return proto;
}

/* IPv4 header with options: checks ihl and that the header fits. Returns the L4
 * protocol, or -1 when malformed. (A socket buffer's linear part may end after the
 * headers: local_reply.h.) */
static __always_inline int parse_ipv4_header(struct cursor *c, struct iphdr **ip_out)
{
	struct iphdr *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return -1;
	if (ip->version != 4 || ip->ihl < 5)
		return -1;
	unsigned int hlen = ip->ihl * 4;
	if (c->pos + hlen > c->end)
		return -1;
	unsigned int tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen)
		return -1;
	c->pos += hlen;
	*ip_out = ip;
	return ip->protocol;
}

/* ... and the whole datagram in the frame (tot_len fits): an XDP frame. */
static __always_inline int parse_ipv4(struct cursor *c, struct iphdr **ip_out)
{
	void *start = c->pos;
	int proto = parse_ipv4_header(c, ip_out);
	if (proto < 0 || start + bpf_ntohs((*ip_out)->tot_len) > c->end)
		return -1;
	return proto;
}

static __always_inline int ip_is_fragment(struct iphdr *ip)
{
	return (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
}

static __always_inline int ip_is_later_fragment(struct iphdr *ip)
{
	return (ip->frag_off & bpf_htons(IP_OFFSET)) != 0;
}

#endif /* SVCXDP_PARSE_H */
