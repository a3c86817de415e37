/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * sock.h — socket-level load balancing: programs on cgroup hooks translate a
 * service address when a socket names it, not per packet.
 *
 *   connect4     connect() to VIP:port (TCP, connected UDP): the socket is
 *                connected to the chosen backend instead; every packet then goes
 *                straight to it, with no NAT and no conntrack entry.
 *   sendmsg4     sendto()/sendmsg() with an address on an unconnected UDP socket:
 *                a backend is chosen per message.
 *   recvmsg4     recvfrom() of a UDP reply: the backend's address is shown as the
 *                service's again.
 *   getpeername4 getpeername() of a connected socket: likewise.
 *   connect6, recvmsg6, getpeername6
 *                the same for an AF_INET6 socket naming an IPv4-mapped address
 *                (::ffff:VIP, what dual-stack Java, Node.js and Go clients use),
 *                with the same IPv4 code; any other IPv6 address is left alone
 *                (IPv6 services are not supported). No sendmsg6: the kernel hands
 *                a mapped destination to udp_sendmsg() before the UDP6_SENDMSG hook
 *                would run (udpv6_sendmsg, net/ipv6/udp.c), so sendmsg4 sees it.
 *   sock_release a closed socket's translation is forgotten (and, for the
 *                counted algorithms, its backend's connection count given back).
 *
 * The backend is chosen by lb.h, the code and maps the XDP program uses, with the
 * socket's source (or the node's address, sock_config) as the ClientIP affinity
 * key and as the flow hash's source address. A service without endpoints fails
 * the call with ECONNREFUSED at once, as kube-proxy's REJECT rule would.
 * What a socket was translated to is kept in sock_revnat, keyed by the socket's
 * cookie and the backend, so replies are matched to the service per socket.
 * A LoadBalancer IP with loadBalancerSourceRanges admits the node's own sockets only
 * from a source in the ranges, as kube-proxy's firewall chain filters the node's
 * packets (sock_source_ranges).
 */
#ifndef SVCXDP_SOCK_H
#define SVCXDP_SOCK_H

#include <uapi/asm-generic/errno.h>

#include "maps.h"
#include "conntrack.h"
#include "lb.h"
#include "ranges.h"

/* Verdicts of cgroup programs: 1 lets the call go on, 0 fails it (with the error
 * given to bpf_set_retval(), else EPERM). */
#define SOCK_ALLOW 1
#define SOCK_DENY 0

static __always_inline void sock_svc_count(__u32 svc_id, int new_flow, int reject)
{
	struct svc_stats *s = svc_stats.lookup(&svc_id);
	if (!s)
		return;
	s->new_flows += new_flow;
	s->rejects += reject;
}

/* The address a local socket's flows are keyed by: its bound source address, else
 * the node's (what its packets would carry; kube-proxy keys ClientIP affinity of
 * host traffic by it too). */
static __always_inline __be32 sock_client_ip(__be32 bound)
{
	if (bound)
		return bound;
	__u32 zero = 0;
	struct sock_config *cfg = sock_config.lookup(&zero);
	return cfg ? cfg->client_ip : 0;
}

/* The sock_revnat key of a socket (its cookie) sent to ip:port. */
static __always_inline void sock_revnat_key_set(struct sock_revnat_key *rk, __u64 cookie,
						__be32 ip, __be16 port, __u8 proto)
{
	rk->cookie = cookie;
	rk->ip = ip;
	rk->port = port;
	rk->proto = proto;
	rk->reserved = 0;
}

/* The service a socket names, copied into `svc` (svc_read, lb.h), in the cluster
 * scope: a ClusterIP, or the twin the agent writes there of every way in from outside
 * (NodePort on a node address, LoadBalancer IP, externalIP), with every endpoint
 * (traffic from inside is subject to neither traffic policy); a NodePort on a
 * loopback address (`curl 127.0.0.1:30080`) is the one on the node's address. One
 * lookup for a connection to no service (up to three while the writer replaces entries:
 * lb.h svc_read; twice that on loopback).
 * 1 found, 0 none, -1 an entry being replaced. */
static __always_inline int sock_service(struct svc_key *sk, struct svc_value *svc)
{
	int found = svc_read(sk, svc);
	if (found || (bpf_ntohl(sk->vip) >> 24) != 127)
		return found;
	__u32 zero = 0;
	struct sock_config *cfg = sock_config.lookup(&zero);
	if (!cfg || !cfg->client_ip)
		return 0;
	sk->vip = cfg->client_ip;
	return svc_read(sk, svc);
}

/* Results of sock_source_ranges. */
#define SOCK_RANGE_ALLOWED 0
#define SOCK_RANGE_REFUSED 1
#define SOCK_RANGE_PACKETS 2  /* not the node's socket: left to its packets */

/* May the socket of ctx, whose source is `src` (0: not bound yet), reach the
 * LoadBalancer IP `vip` of a frontend with source ranges (svc_id's)? Only a socket of
 * the node's network namespace is judged here: its packets would carry its bound
 * address or else the node's, so kube-proxy's rules decide as they would on them —
 * the source in the ranges, or the LB IP itself as source while the node's address
 * is (allowFromNode: a VIP the node holds loops back with itself as source). A socket
 * whose source is not known is left untranslated, its packets judged with their real
 * source where they meet a svcxdp program: a pod's (under the hooks with `lab up
 * --socket-lb-pods`), whose address only routing gives it, on the pods' XDP entry
 * point; an unbound one of the node's when the agent was not told the node's address,
 * on the node the LB IP leads to. */
static __always_inline int sock_source_ranges(struct bpf_sock_addr *ctx, __u32 svc_id,
					      __be32 src, __be32 vip)
{
	__u32 zero = 0;
	struct sock_config *cfg = sock_config.lookup(&zero);
	__be32 node = cfg ? cfg->client_ip : 0;
	if (cfg && cfg->netns_cookie && bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
		return SOCK_RANGE_PACKETS;
	if (!src && !node)   /* the node's address not told (no --node-ip): not judged */
		return SOCK_RANGE_PACKETS;
	if (source_allowed(svc_id, src ? src : node) ||
	    (src == vip && source_allowed(svc_id, node)))
		return SOCK_RANGE_ALLOWED;
	return SOCK_RANGE_REFUSED;
}

/* An IPv4 destination or peer as a hook sees it: the address and the port (network
 * order), read from and written back to the ctx by the callers below, user_ip4 in the
 * IPv4 hooks, the low word of a ::ffff:0:0/96 user_ip6 in the IPv6 ones (the kernel
 * lets each attach type touch only its own family's field). */
struct sock4_addr {
	__be32 ip;
	__be16 port;
};

/* Results of sock4_xlate. */
#define SOCK_XLATE_NONE 0     /* not a service: left as it is */
#define SOCK_XLATE_DONE 1     /* a service: `a` is now the chosen backend */
#define SOCK_XLATE_REFUSED 2  /* fail the call: a service without endpoints, a source
				* outside a LoadBalancer IP's ranges */

/* The socket of ctx names `a`: if that is a service, choose its backend and put it in
 * `a`. `src`, `sport`: the socket's source as far as it is known (0 when unbound). */
static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx, struct sock4_addr *a,
				       __be32 src, __be16 sport)
{
	__u8 proto = ctx->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SOCK_XLATE_NONE;
	struct svc_key sk = {};
	sk.vip = a->ip;
	sk.port = a->port;
	sk.proto = proto;
	sk.scope = SVCXDP_SCOPE_CLUSTER;
	/* A copy on the stack, not svc_scratch: XDP may run on this CPU in softirq while
	 * the hook is in the middle of the syscall, and would overwrite a per-CPU copy. */
	struct svc_value copy;
	struct svc_value *svc = &copy;
	int found = sock_service(&sk, svc);
	if (found == 0)
		return SOCK_XLATE_NONE;
	/* What the application named: shown again by recvmsg/getpeername. */
	__be32 asked = a->ip;
	if (found > 0 && (svc->flags & SVCXDP_SVC_F_SOURCE_RANGES)) {
		int range = sock_source_ranges(ctx, svc->svc_id, src, sk.vip);
		if (range == SOCK_RANGE_PACKETS)
			return SOCK_XLATE_NONE;
		if (range == SOCK_RANGE_REFUSED) {
			/* kube-proxy drops such a packet in OUTPUT; the call fails at once,
			 * as a firewall's drop there fails a local send */
			counters_bump(SVCXDP_CNT_DROP_SOURCE_RANGE);
			bpf_set_retval(-EPERM);
			return SOCK_XLATE_REFUSED;
		}
	}

	struct events ev = { .main = SVCXDP_CNT_SOCK_XLATE, .extra = SVCXDP_CNT_MAX };
	struct lb_choice pick = {};
	struct backend *b = NULL;
	/* found < 0: the entry was being replaced as we read it; refused like a slot
	 * caught mid-update (about once in a million under continuous rewrites). */
	if (found > 0 && svc->count != 0) {
		struct ct_key k;
		ct_key_set(&k, sock_client_ip(src), sk.vip, sport, sk.port, proto,
			   SVCXDP_CT_DIR_FORWARD);
		__u64 now = bpf_ktime_get_coarse_ns();
		b = lb_pick(svc, &k, now, &pick, &ev);
		if (b)
			lb_remember(svc, &k, &pick, now);
	}
	__u32 backend_id = pick.id;
	if (!b) {
		/* No endpoints (or a slot mid-update): refuse now, not after a timeout. */
		sock_svc_count(svc->svc_id, 0, 1);
		counters_bump(SVCXDP_CNT_SOCK_REJECT);
		bpf_set_retval(-ECONNREFUSED);
		return SOCK_XLATE_REFUSED;
	}

	struct sock_revnat_key rk;
	sock_revnat_key_set(&rk, bpf_get_socket_cookie(ctx), b->ip, b->port, proto);
	struct sock_revnat_value rv = {};
	rv.vip = asked;
	rv.vport = sk.port;
	rv.svc_id = svc->svc_id;
	rv.backend_id = backend_id;
	/* Only a connection holds a count: it is given back at release. */
	if (alg_counts_conns(svc->algorithm) && proto == IPPROTO_TCP) {
		rv.flags = SVCXDP_SOCK_F_COUNTED;
		conns_add(backend_id, 1);
	}
	sock_revnat.update(&rk, &rv);

	a->ip = b->ip;
	a->port = b->port;
	sock_svc_count(svc->svc_id, 1, 0);
	lb_count_new(backend_id);
	counters_bump(ev.main);
	if (ev.extra < SVCXDP_CNT_MAX)
		counters_bump(ev.extra);
	return SOCK_XLATE_DONE;
}

/* If the socket of ctx was translated to `a`, put the service it asked for in `a`
 * (1), else leave it (0). */
static __always_inline int sock4_revnat(struct bpf_sock_addr *ctx, struct sock4_addr *a)
{
	struct sock_revnat_key rk;
	sock_revnat_key_set(&rk, bpf_get_socket_cookie(ctx), a->ip, a->port, ctx->protocol);
	struct sock_revnat_value *rv = sock_revnat.lookup(&rk);
	if (!rv)
		return 0;
	a->ip = rv->vip;
	a->port = rv->vport;
	counters_bump(SVCXDP_CNT_SOCK_REVNAT);
	return 1;
}

/* The IPv4 hooks: user_ip4. */

static __always_inline int sock4_xlate_ctx(struct bpf_sock_addr *ctx, __be32 src, __be16 sport)
{
	struct sock4_addr a = { .ip = ctx->user_ip4, .port = (__be16)ctx->user_port };
	int r = sock4_xlate(ctx, &a, src, sport);
	if (r == SOCK_XLATE_DONE) {
		ctx->user_ip4 = a.ip;
		ctx->user_port = (__u32)a.port;
	}
	return r == SOCK_XLATE_REFUSED ? SOCK_DENY : SOCK_ALLOW;
}

static __always_inline void sock4_revnat_ctx(struct bpf_sock_addr *ctx)
{
	struct sock4_addr a = { .ip = ctx->user_ip4, .port = (__be16)ctx->user_port };
	if (sock4_revnat(ctx, &a)) {
		ctx->user_ip4 = a.ip;
		ctx->user_port = (__u32)a.port;
	}
}

/* The IPv6 hooks: only an IPv4-mapped user_ip6 (::ffff:a.b.c.d), whose low word is
 * the IPv4 address; the kernel takes such an address the IPv4 way (tcp_v6_connect ->
 * tcp_v4_connect, __ip6_datagram_connect -> __ip4_datagram_connect) after the hook,
 * and shows an IPv4 peer in this form (udpv6_recvmsg, inet6_getname). A rewritten
 * address stays mapped: only the low word and the port change. */

static __always_inline int sock6_is_v4mapped(__u32 w0, __u32 w1, __u32 w2)
{
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline int sock6_mapped(struct bpf_sock_addr *ctx, struct sock4_addr *a)
{
	if (!sock6_is_v4mapped(ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2]))
		return 0;
	a->ip = ctx->user_ip6[3];
	a->port = (__be16)ctx->user_port;
	return 1;
}

static __always_inline int sock6_xlate_ctx(struct bpf_sock_addr *ctx, __be32 src, __be16 sport)
{
	struct sock4_addr a;
	if (!sock6_mapped(ctx, &a))
		return SOCK_ALLOW;
	int r = sock4_xlate(ctx, &a, src, sport);
	if (r == SOCK_XLATE_DONE) {
		ctx->user_ip6[3] = a.ip;
		ctx->user_port = (__u32)a.port;
	}
	return r == SOCK_XLATE_REFUSED ? SOCK_DENY : SOCK_ALLOW;
}

static __always_inline void sock6_revnat_ctx(struct bpf_sock_addr *ctx)
{
	struct sock4_addr a;
	if (!sock6_mapped(ctx, &a))
		return;
	if (sock4_revnat(ctx, &a)) {
		ctx->user_ip6[3] = a.ip;
		ctx->user_port = (__u32)a.port;
	}
}

int svcxdp_connect4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return SOCK_ALLOW;
	return sock4_xlate_ctx(ctx, sk->src_ip4, bpf_htons((__u16)sk->src_port));
}

int svcxdp_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return SOCK_ALLOW;
	__be32 src = ctx->msg_src_ip4 ? ctx->msg_src_ip4 : sk->src_ip4;
	return sock4_xlate_ctx(ctx, src, bpf_htons((__u16)sk->src_port));
}

int svcxdp_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock4_revnat_ctx(ctx);
	return SOCK_ALLOW;
}

int svcxdp_getpeer4(struct bpf_sock_addr *ctx)
{
	sock4_revnat_ctx(ctx);
	return SOCK_ALLOW;
}

/* connect() of an AF_INET6 socket (tcp_v6_pre_connect, udpv6_pre_connect), before
 * the kernel looks at the address. The source is IPv4 only if the socket was bound
 * to a mapped address (an unbound one is keyed by the node's address, as in
 * connect4). */
int svcxdp_connect6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return SOCK_ALLOW;
	__be32 src = 0;
	if (sock6_is_v4mapped(sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2]))
		src = sk->src_ip6[3];
	return sock6_xlate_ctx(ctx, src, bpf_htons((__u16)sk->src_port));
}

int svcxdp_recvmsg6(struct bpf_sock_addr *ctx)
{
	sock6_revnat_ctx(ctx);
	return SOCK_ALLOW;
}

int svcxdp_getpeer6(struct bpf_sock_addr *ctx)
{
	sock6_revnat_ctx(ctx);
	return SOCK_ALLOW;
}

int svcxdp_release(struct bpf_sock *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SOCK_ALLOW;
	struct sock_revnat_key rk;
	sock_revnat_key_set(&rk, bpf_get_socket_cookie(ctx), ctx->dst_ip4, (__be16)ctx->dst_port,
			    ctx->protocol);
	struct sock_revnat_value *rv = sock_revnat.lookup(&rk);
	if (!rv)
		return SOCK_ALLOW;
	if (rv->flags & SVCXDP_SOCK_F_COUNTED) {
		/* Given back only to the backend it was taken from: the writer hands a removed
		 * backend's id to another, whose count is not ours to lower (as ct_uncount). */
		__u32 id = rv->backend_id;
		struct backend *b = backends.lookup(&id);
		if (b && b->svc_id == rv->svc_id && b->ip == rk.ip && b->port == rk.port)
			conns_add(id, -1);
	}
	sock_revnat.delete(&rk);
	return SOCK_ALLOW;
}

#endif /* SVCXDP_SOCK_H */
