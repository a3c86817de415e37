/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * nat.h — rewriting addresses and ports with incremental checksum updates.
 * `l4` is NULL for a non-first fragment, which carries no transport header.
 */
#ifndef SVCXDP_NAT_H
#define SVCXDP_NAT_H

#include "csum.h"

/* Which transport checksum field to fix, and how (UDP keeps a zero checksum). */
struct l4_csum {
	__u16 *check;
	int is_udp;
};

static __always_inline void l4_csum_replace4(struct l4_csum *l4, __u32 from, __u32 to)
{
	if (!l4->check)
		return;
	if (l4->is_udp)
		udp_csum_replace4(l4->check, from, to);
	else
		csum_replace4(l4->check, from, to);
}

static __always_inline void l4_csum_replace2(struct l4_csum *l4, __u16 from, __u16 to)
{
	if (!l4->check)
		return;
	if (l4->is_udp)
		udp_csum_replace2(l4->check, from, to);
	else
		csum_replace2(l4->check, from, to);
}

/* Destination NAT: VIP:port -> backend. */
static __always_inline void nat_dst(struct iphdr *ip, __be16 *dport, struct l4_csum *l4,
				    __be32 new_ip, __be16 new_port)
{
	__be32 old_ip = ip->daddr;
	ip->daddr = new_ip;
	csum_replace4(&ip->check, old_ip, new_ip);
	l4_csum_replace4(l4, old_ip, new_ip);
	if (dport && *dport != new_port) {
		l4_csum_replace2(l4, *dport, new_port);
		*dport = new_port;
	}
}

/* Source NAT of a reply: backend -> VIP:port. */
static __always_inline void nat_src(struct iphdr *ip, __be16 *sport, struct l4_csum *l4,
				    __be32 new_ip, __be16 new_port)
{
	__be32 old_ip = ip->saddr;
	ip->saddr = new_ip;
	csum_replace4(&ip->check, old_ip, new_ip);
	l4_csum_replace4(l4, old_ip, new_ip);
	if (sport && *sport != new_port) {
		l4_csum_replace2(l4, *sport, new_port);
		*sport = new_port;
	}
}

#endif /* SVCXDP_NAT_H */
