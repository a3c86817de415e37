/* SPDX-License-Identifier: Apache-2.0 */
/*
 * flowhash.h - the one flow-tuple hash of svcxdp.
 *
 * Included as-is by the XDP program (bcc/clang, target bpf) and by the cffi
 * module (gcc, user space), so the control plane can predict which Maglev
 * slot the datapath picks for any tuple. Keep it self-contained: no
 * includes, no libc, no loops, only `unsigned int` (32 bits on every target
 * we build for; checked below).
 *
 * Byte order: every argument is the value exactly as it sits in the packet
 * (network byte order), loaded as a native integer: pass `ip->saddr`,
 * `tcp->source`, `tcp->dest`, `ip->protocol` straight through, never
 * through bpf_ntohs()/bpf_ntohl(). User space reproduces the same numbers
 * with int.from_bytes(packet_bytes, sys.byteorder).
 *
 * The destination address is not hashed: a Maglev table belongs to one
 * service (vip, port, proto), so the daddr carries no information there
 * (Katran and Cilium do the same).
 *
 * The mixing is Bob Jenkins' lookup3 final() applied to three words, the
 * same function as the kernel's jhash_3words(), so its quality is known.
 */
#ifndef SVCXDP_FLOWHASH_H
#define SVCXDP_FLOWHASH_H

#ifndef __always_inline
#define __always_inline inline __attribute__((__always_inline__))
#endif

/* Fails to compile where unsigned int is not 32 bits wide. */
typedef char svcxdp_flowhash_u32_is_32_bits[(sizeof(unsigned int) == 4) ? 1 : -1];

/* Seed used when nothing else is configured; every node must share it. */
#define SVCXDP_FLOW_HASH_SEED_DEFAULT 0x5eed0f10U

/* lookup3's starting value, plus 3 words * 4 bytes as hashword() does. */
#define SVCXDP_JHASH_INITVAL 0xdeadbeefU

static __always_inline unsigned int svcxdp_rol32(unsigned int x, unsigned int k)
{
	return (x << k) | (x >> (32 - k));
}

/* jhash_3words(a, b, c, seed) of lookup3 / the kernel. */
static __always_inline unsigned int
svcxdp_jhash_3words(unsigned int a, unsigned int b, unsigned int c, unsigned int seed)
{
	unsigned int init = SVCXDP_JHASH_INITVAL + (3U << 2) + seed;

	a += init;
	b += init;
	c += init;
	/* lookup3 final(): every input bit reaches every output bit. */
	c ^= b; c -= svcxdp_rol32(b, 14);
	a ^= c; a -= svcxdp_rol32(c, 11);
	b ^= a; b -= svcxdp_rol32(a, 25);
	c ^= b; c -= svcxdp_rol32(b, 16);
	a ^= c; a -= svcxdp_rol32(c, 4);
	b ^= a; b -= svcxdp_rol32(a, 14);
	c ^= b; c -= svcxdp_rol32(b, 24);
	return c;
}

/*
 * Hash of a flow towards one service.
 *   saddr: IPv4 source address, network byte order (ip->saddr)
 *   sport, dport: L4 ports, network byte order (tcp->source, tcp->dest);
 *          only the low 16 bits are used
 *   proto: IPPROTO_* (ip->protocol)
 *   seed:  shared seed (SVCXDP_FLOW_HASH_SEED_DEFAULT unless configured)
 * Words: saddr, (sport << 16 | dport), proto.
 */
static __always_inline unsigned int
svcxdp_flow_hash(unsigned int saddr, unsigned int sport, unsigned int dport,
		 unsigned int proto, unsigned int seed)
{
	unsigned int ports = ((sport & 0xffffU) << 16) | (dport & 0xffffU);

	return svcxdp_jhash_3words(saddr, ports, proto & 0xffU, seed);
}

/*
 * ClientIP session affinity: the source port is left out (hashed as 0), so
 * every connection of one client lands on the same backend while the table
 * is unchanged. Identical to svcxdp_flow_hash(saddr, 0, dport, proto, seed).
 */
static __always_inline unsigned int
svcxdp_flow_hash_affinity(unsigned int saddr, unsigned int dport,
			  unsigned int proto, unsigned int seed)
{
	return svcxdp_flow_hash(saddr, 0, dport, proto, seed);
}

/*
 * Slot hash of ct_udp_recent (bpf/conntrack.h, ct_udp_slot): a quick multiplicative
 * mix of a UDP forward tuple, arguments as the conntrack key holds them (network byte
 * order); the caller masks it to the filter's slot count. It only spreads tuples over
 * the filter, which every UDP packet to a service asks: cheaper than the jhash above,
 * and it needs no seed (a collision only makes the filter say "maybe").
 */
static __always_inline unsigned int
svcxdp_udp_recent_hash(unsigned int saddr, unsigned int daddr, unsigned int sport,
		       unsigned int dport)
{
	unsigned int h = saddr * 0x9e3779b1U;

	h ^= daddr * 0x85ebca6bU;
	h ^= (((sport & 0xffffU) << 16) | (dport & 0xffffU)) * 0xc2b2ae35U;
	h ^= h >> 16;
	h *= 0x7feb352dU;
	h ^= h >> 15;
	return h;
}

/*
 * Slot of the FIB result cache (bpf/fib.h, fib_cache_slot), of 2^bits: a multiplicative
 * mix of a destination (network byte order) and an ingress ifindex (small, so moved into
 * the high bits), its top bits. No seed: the cache is per CPU and a collision only costs
 * a FIB lookup. An ifindex's bits above the 12th are shifted out, so two devices 4096
 * apart share every slot: the slot's own iif tells them apart.
 */
static __always_inline unsigned int
svcxdp_fib_cache_slot(unsigned int daddr, unsigned int ifindex, unsigned int bits)
{
	return ((daddr ^ (ifindex << 20)) * 0x9e3779b1U) >> (32 - bits);
}

/*
 * Set of a conntrack key in ct_unconfirmed_pod (bpf/conntrack.h, ctp_set): the whole
 * key (addresses and ports as the key holds them, protocol, direction) through
 * jhash_3words under the table's secret seed, so spoofed tuples cannot be aimed at
 * one set. The caller masks it to the set count.
 */
static __always_inline unsigned int
svcxdp_ct_set_hash(unsigned int saddr, unsigned int daddr, unsigned int sport,
		   unsigned int dport, unsigned int proto, unsigned int dir, unsigned int seed)
{
	unsigned int ports = ((sport & 0xffffU) << 16) | (dport & 0xffffU);

	return svcxdp_jhash_3words(saddr, daddr, ports, seed ^ ((proto & 0xffU) | ((dir & 0xffU) << 8)));
}

/*
 * One byte of a backend address as rev_nat's key holds it (ip, port, proto), never 0.
 * The writer puts it in the address's rev_nat value, so a reply that read an element
 * the kernel had already reused for another address can tell (conntrack.h
 * ct_backend_of_any); a value holding 0 was written without one and is not checked.
 * A fold, not a hash: it is paid on every reply, and only tells one address from the
 * next key written into the same element.
 */
static __always_inline unsigned int
svcxdp_revnat_check(unsigned int ip, unsigned int port, unsigned int proto)
{
	unsigned int h = ip ^ ((port & 0xffffU) << 8) ^ (proto & 0xffU);

	h ^= h >> 16;
	h = (h ^ (h >> 8)) & 0xffU;
	return h ? h : 1;
}

/* Maglev slot of a flow hash in a table of m entries (m > 0, prime). */
static __always_inline unsigned int svcxdp_maglev_slot(unsigned int hash, unsigned int m)
{
	return hash % m;
}

#endif /* SVCXDP_FLOWHASH_H */
