/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * csum.h — Internet checksum helpers (RFC 1071 sums, RFC 1624 incremental updates).
 * All values are taken exactly as they sit in the packet (network order); the one's
 * complement sum is byte-order independent as long as both sides use the same order.
 */
#ifndef SVCXDP_CSUM_H
#define SVCXDP_CSUM_H

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u16 csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	return csum_fold32((__u32)sum);
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for a 16-bit field. */
static __always_inline void csum_replace2(__u16 *csum, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~*csum;
	sum += (__u16)~from;
	sum += to;
	*csum = ~csum_fold32(sum);
}

/* sum + ~m + m' for a 32-bit field (an address), as two 16-bit words. */
static __always_inline __u32 csum_diff4(__u32 sum, __u32 from, __u32 to)
{
	sum += (__u16)~(from & 0xffff);
	sum += (__u16)~(from >> 16);
	sum += to & 0xffff;
	sum += to >> 16;
	return sum;
}

/* Same as csum_replace2 for a 32-bit field. */
static __always_inline void csum_replace4(__u16 *csum, __u32 from, __u32 to)
{
	*csum = ~csum_fold32(csum_diff4((__u16)~*csum, from, to));
}

/* The same change to a field that holds a pseudo-header's sum, not yet complemented
 * (what a transport checksum left to the device or to GSO holds): HC' = HC + ~m + m'. */
static __always_inline void csum_pseudo_replace4(__u16 *csum, __u32 from, __u32 to)
{
	*csum = csum_fold32(csum_diff4(*csum, from, to));
}

/* UDP over IPv4: a zero checksum means "none" and must stay zero; a computed
 * zero is sent as 0xffff (RFC 768). */
static __always_inline void udp_csum_replace4(__u16 *csum, __u32 from, __u32 to)
{
	if (*csum == 0)
		return;
	csum_replace4(csum, from, to);
	if (*csum == 0)
		*csum = 0xffff;
}

static __always_inline void udp_csum_replace2(__u16 *csum, __u16 from, __u16 to)
{
	if (*csum == 0)
		return;
	csum_replace2(csum, from, to);
	if (*csum == 0)
		*csum = 0xffff;
}

/* Checksum of a 20-byte IPv4 header we built ourselves (no options). */
static __always_inline __u16 ipv4_hdr_csum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return ~csum_fold32(sum);
}

#endif /* SVCXDP_CSUM_H */
