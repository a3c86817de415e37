/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * svcxdp.c — Kubernetes Services in XDP.
 *
 * Per packet: parse; if the destination is a service (VIP, port, protocol), keep or
 * create its conntrack entry, pick a backend for a new flow, and DNAT; otherwise,
 * if it is a backend's reply to a tracked flow, reverse-NAT it to the VIP. Services
 * without endpoints are rejected with a RST / ICMP port unreachable. Everything
 * else passes untouched.
 *
 * Two entry points share this code: svcxdp_main on pod-facing interfaces (ClusterIP
 * frontends) and svcxdp_external on the node's external interfaces (NodePort,
 * externalIPs, LoadBalancer IPs first, then ClusterIPs; source NAT to other nodes,
 * nodeport.h).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "svcxdp.h"
#include "parse.h"
#include "csum.h"
#include "maps.h"
#include "conntrack.h"
#include "lb.h"
#include "ranges.h"
#include "nat.h"
#include "reject.h"
#include "icmp.h"
#include "fib.h"
/* The cgroup socket hooks: one program object with the XDP entry, sharing its maps. */
#include "sock.h"
/* The idle-flow GC's entry point (svcxdp_ct_gc), run by the agent with test-run. */
#include "ctgc.h"

/* What the transport parser found. */
struct l4_info {
	__be16 *sport;
	__be16 *dport;
	struct l4_csum csum;
	__u8 tcp_flags;
};

/* Bytes accounted per packet: L2 header plus the IP datagram (no padding). */
static __always_inline __u64 frame_bytes(struct iphdr *ip, __u32 l3_off)
{
	return l3_off + bpf_ntohs(ip->tot_len);
}

static __always_inline void svc_account(__u32 svc_id, __u64 bytes, int new_flow, int reject)
{
	struct svc_stats *s = svc_stats.lookup(&svc_id);
	if (!s)
		return;
	s->packets += 1;
	s->bytes += bytes;
	s->new_flows += new_flow;
	s->rejects += reject;
}

/* A datagram's fragments share (source, destination, IP id, protocol); the addresses
 * are the ones the first fragment carried before any translation. */
static __always_inline void frag_key_set(struct frag_key *k, const struct iphdr *ip,
					 __be32 src, __be32 dst)
{
	k->src = src;
	k->dst = dst;
	k->id = ip->id;
	k->proto = ip->protocol;
}

/* The first fragment of a datagram records its translation for the later ones. */
static __always_inline void frag_record(struct iphdr *ip, __be32 orig_src, __be32 orig_dst,
					__be32 nat_ip, __be32 peer_ip, __u8 dir)
{
	if (!(ip->frag_off & bpf_htons(IP_MF)))
		return;
	struct frag_key k = {};
	frag_key_set(&k, ip, orig_src, orig_dst);
	struct frag_value v = {};
	v.created = bpf_ktime_get_coarse_ns();
	v.nat_ip = nat_ip;
	v.peer_ip = peer_ip;
	v.dir = dir;
	fragments.update(&k, &v);
}

/* The translation a later fragment takes from its datagram's first fragment, or NULL: no
 * record, or one past the reassembly timeout, which belongs to an older datagram that had
 * the same IP id. Signed age: another CPU may have recorded the first fragment a moment
 * after our clock read. */
static __always_inline struct frag_value *frag_translation(const struct iphdr *ip)
{
	struct frag_key k = {};
	frag_key_set(&k, ip, ip->saddr, ip->daddr);
	struct frag_value *v = fragments.lookup(&k);
	if (!v || (__s64)(bpf_ktime_get_coarse_ns() - v->created) >
		  (__s64)(SVCXDP_FRAG_TIMEOUT_S * SVCXDP_NSEC_PER_SEC))
		return NULL;
	return v;
}

/* nodeport.h and local_reply.h use the accounting helpers above. */
#include "nodeport.h"
#include "local_reply.h"
#include "otherhost.h"

static __always_inline int handle_later_fragment(struct xdp_md *ctx, struct ethhdr *eth,
						 struct iphdr *ip, int external, struct events *ev)
{
	struct frag_value *v = frag_translation(ip);
	if (!v) {
		ev->main = SVCXDP_CNT_FRAG_UNKNOWN;
		return XDP_PASS;
	}
	struct l4_csum none = {};
	__be32 peer = v->peer_ip;
	if (v->dir == SVCXDP_CT_DIR_FORWARD) {
		nat_dst(ip, NULL, &none, v->nat_ip, 0);
		if (peer)
			nat_src(ip, NULL, &none, peer, 0);
	} else {
		nat_src(ip, NULL, &none, v->nat_ip, 0);
		if (peer)
			nat_dst(ip, NULL, &none, peer, 0);
	}
	ev->main = SVCXDP_CNT_FRAG_NAT;
	if (external && peer)
		return SVCXDP_VERDICT_NP_OUT;  /* leaves the way its first fragment did */
	return XDP_PASS;
}

static __always_inline int handle_reply(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *ip,
					struct l4_info *l4, __u32 l3_off, int vlan,
					struct events *ev)
{
	struct reply_match m;
	/* A reply to the hairpin address is for the backend itself (handle_service). */
	int hairpin = ip->daddr == bpf_htonl(SVCXDP_HAIRPIN_IP);
	__be32 client = hairpin ? ip->saddr : ip->daddr;
	if (!ct_match_reply(ip->saddr, *l4->sport, client, *l4->dport, ip->protocol, &m)) {
		ev->main = SVCXDP_CNT_PASS_NON_SERVICE;
		return XDP_PASS;
	}
	__u64 now = bpf_ktime_get_coarse_ns();
	if (!ct_reply_track(&m, now, ip->protocol, l4->tcp_flags)) {
		ev->main = SVCXDP_CNT_PASS_NON_SERVICE;
		return XDP_PASS;
	}
	struct sent_tuple sent = { ip->saddr, ip->daddr, *l4->sport, *l4->dport };
	nat_src(ip, l4->sport, &l4->csum, m.vip, m.vport);
	if (hairpin)
		nat_dst(ip, NULL, &l4->csum, client, 0);
	/* Later fragments come addressed as this one came (to the hairpin address too). */
	frag_record(ip, sent.src, sent.dst, m.vip, hairpin ? client : 0, SVCXDP_CT_DIR_REPLY);
	svc_account(m.v->svc_id, frame_bytes(ip, l3_off), 0, 0);
	ev->main = SVCXDP_CNT_REVNAT;
	return forward(ctx, eth, ip, vlan, now, &sent, ev);
}

/* Is the conntrack entry's backend still a live member of its service? */
static __always_inline int ct_backend_valid(const struct ct_value *v)
{
	__u32 id = v->backend_id;
	struct backend *b = backends.lookup(&id);
	return b && b->state != SVCXDP_BACKEND_UNUSED && ct_backend_same(v, b);
}

static __always_inline int handle_service(struct xdp_md *ctx, struct ethhdr *eth,
					  struct iphdr *ip, struct l4_info *l4,
					  struct svc_value *svc, __u32 l3_off, int vlan, int external,
					  struct events *ev)
{
	__u64 bytes = frame_bytes(ip, l3_off);
	struct ct_key k;
	ct_key_set(&k, ip->saddr, ip->daddr, *l4->sport, *l4->dport, ip->protocol,
		   SVCXDP_CT_DIR_FORWARD);

	__u64 now = bpf_ktime_get_coarse_ns();
	__be32 nat_ip;
	__be16 nat_port;
	int where = CT_IN_CONFIRMED;
	struct np_snat snat = {};
	/* A bare SYN starts a connection: it does not look in conntrack, whose miss (a
	 * cold bucket) cost a third of a new flow (conntrack.h, top); nor does a UDP
	 * datagram whose tuple ct_udp_recent says has no live entry there. Any other
	 * packet takes its confirmed entry while that is current, else a newer
	 * unconfirmed one. External flows still look: skipping there measured no gain
	 * (the bucket it reads is the one the flow's inserts read next, datapath-notes
	 * §14), and their SNAT handling of reused tuples is tested with the lookup. */
	struct ct_value *v = NULL;
	struct ct_value ubuf;   /* an unconfirmed entry is read as a copy (conntrack.h) */
	if (external || !(ct_bare_syn(k.proto, l4->tcp_flags) ||
			  (k.proto == IPPROTO_UDP && ct_udp_absent(&k, now))))
		v = conntrack.lookup(&k);
	if (!v || !ct_current(v, now, k.proto)) {
		struct ct_value *u = ctu_lookup(external, &k, &ubuf);
		if (u) {
			v = u;
			where = CT_IN_UNCONFIRMED;
		} else if (!v) {
			where = CT_IN_NONE;
		}
	}
	if (v && ct_alive(v, now, k.proto) && !ct_reopened(v, l4->tcp_flags)) {
		if (ct_backend_valid(v)) {
			struct ct_mark was = ct_mark_of(v);
			if (ct_touch(v, &k, now, l4->tcp_flags, SVCXDP_CT_F_FIN_CLIENT))
				ct_uncount(v);
			int touched = ct_changed(v, was);
			nat_ip = v->nat_ip;
			nat_port = v->nat_port;
			/* Read before a confirmation moves the entry (v is gone after it). */
			if (v->flags & SVCXDP_CT_F_SNAT) {
				snat.ip = v->peer_ip;
				snat.port = v->peer_port;
			}
			int confirmed_now = where == CT_IN_UNCONFIRMED &&
					    ct_confirms(k.proto, l4->tcp_flags);
			if (confirmed_now)
				ct_confirm(external, &k, v, now);
			else if (where == CT_IN_UNCONFIRMED && touched)
				ctu_store(external, &k, v);
			/* An unconfirmed SNATed flow may have lost its port (nodeport.h); a
			 * confirmed one has its port's entry looked at when it refreshes its own
			 * (once a second) or closes: kept warm in the LRU, written back if it was
			 * evicted all the same, closed with the client's FIN or RST. */
			if (external && snat.ip && (where == CT_IN_UNCONFIRMED || touched))
				np_pending_set(&k, svc->svc_id, 0,
					       where == CT_IN_UNCONFIRMED ? confirmed_now : 1, vlan,
					       SVCXDP_NP_CHECK);
			ev->main = SVCXDP_CNT_CT_HIT;
			svc_account(svc->svc_id, bytes, 0, 0);
			goto dnat;
		}
		/* Its backend was removed: choose again, never send to a dead address. */
		ev->extra = SVCXDP_CNT_CT_STALE;
	}
	/* An expired, reopened or stale flow is replaced below: it no longer holds a
	 * connection of its old backend. */
	if (v) {
		__u8 flags = v->flags;   /* (ct_uncount changes only the flags) */
		ct_uncount(v);
		if (where == CT_IN_UNCONFIRMED && v->flags != flags)
			ctu_store(external, &k, v);
	}

	if (!ct_may_start(k.proto, l4->tcp_flags)) {
		ev->main = SVCXDP_CNT_DROP_MALFORMED;
		return XDP_DROP;
	}
	/* A new flow to a LoadBalancer IP meets its source ranges before anything is
	 * chosen, counted or remembered for it (kube-proxy's firewall chain, which
	 * filters pods too, on their cluster-scope twin). */
	if ((svc->flags & SVCXDP_SVC_F_SOURCE_RANGES) &&
	    !source_allowed(svc->svc_id, ip->saddr)) {
		ev->main = SVCXDP_CNT_DROP_SOURCE_RANGE;
		return XDP_DROP;
	}
	if (svc->count == 0 && (svc->flags & SVCXDP_SVC_F_LOCAL_DROP)) {
		ev->main = SVCXDP_CNT_DROP_NO_LOCAL;
		return XDP_DROP;
	}
	if (svc->count == 0) {
		if (!reject_answerable(eth, ip->saddr)) {
			ev->main = SVCXDP_CNT_DROP_MALFORMED;
			return XDP_DROP;
		}
		svc_account(svc->svc_id, bytes, 0, 1);
		if (!reject_allowed(now)) {   /* refused all the same, unanswered (reject.h) */
			ev->main = SVCXDP_CNT_REJECT_LIMITED;
			return XDP_DROP;
		}
		ev->main = SVCXDP_CNT_REJECT;
		/* Constant L2 lengths keep the rebuilt headers at offsets the verifier
		 * can check. */
		if (ip->protocol == IPPROTO_TCP) {
			struct tcphdr *tcp = (struct tcphdr *)l4->sport;
			if (vlan)
				return reject_tcp(ctx, ETH_HLEN + 4, ip, tcp);
			return reject_tcp(ctx, ETH_HLEN, ip, tcp);
		}
		if (vlan)
			return reject_udp(ctx, ETH_HLEN + 4, ip->ihl * 4);
		return reject_udp(ctx, ETH_HLEN, ip->ihl * 4);
	}

	/* ClientIP affinity first, then the algorithm: the selection the socket
	 * hooks share (lb.h). */
	struct lb_choice pick;
	struct backend *b = lb_pick(svc, &k, now, &pick, ev);
	__u32 backend_id = pick.id;
	if (!b) {
		ev->main = SVCXDP_CNT_SLOT_MISS;
		return XDP_DROP;
	}
	struct ct_value *first = ct_create(external, &k, ip->daddr, *l4->dport, b, backend_id,
					   svc->svc_id, now, alg_counts_conns(svc->algorithm), where,
					   &ubuf);
	if (first) {
		/* Another CPU recorded this flow's first packet a moment ago: follow it. */
		if (external && (first->flags & SVCXDP_CT_F_SNAT)) {
			snat.ip = first->peer_ip;
			snat.port = first->peer_port;
		}
		nat_ip = first->nat_ip;
		nat_port = first->nat_port;
		ev->main = SVCXDP_CNT_CT_HIT;
		svc_account(svc->svc_id, bytes, 0, 0);
		goto dnat;
	}
	lb_remember(svc, &k, &pick, now);
	nat_ip = b->ip;
	nat_port = b->port;
	ev->main = SVCXDP_CNT_CT_NEW;
	svc_account(svc->svc_id, bytes, 1, 0);
	lb_count_new(backend_id);
	/* Whether a new external flow needs SNAT is the tail program's to decide
	 * (nodeport.h, np_snat): the route lookup and the port search stay out of
	 * this program's verification. */
	if (external)
		np_pending_set(&k, svc->svc_id, ct_needs_reply_entry(b), where == CT_IN_CONFIRMED,
			       vlan, SVCXDP_NP_NEW);

dnat:;
	struct sent_tuple sent = { ip->saddr, ip->daddr, *l4->sport, *l4->dport };
	nat_dst(ip, l4->dport, &l4->csum, nat_ip, nat_port);
	/* Hairpin: the client is its own backend; it must not see itself as source. */
	if (nat_ip == ip->saddr) {
		nat_src(ip, NULL, &l4->csum, bpf_htonl(SVCXDP_HAIRPIN_IP), 0);
		ev->extra = SVCXDP_CNT_HAIRPIN;
	}
	if (snat.ip)
		nat_src(ip, l4->sport, &l4->csum, snat.ip, snat.port);
	/* Later fragments leave with the source this one leaves with (SNAT, hairpin). */
	frag_record(ip, sent.src, sent.dst, nat_ip, ip->saddr != sent.src ? ip->saddr : 0,
		    SVCXDP_CT_DIR_FORWARD);
	if (external) {
		np_sent_set(&sent);
		return SVCXDP_VERDICT_NP_OUT;
	}
	return forward(ctx, eth, ip, vlan, now, &sent, ev);
}

/* `external` and `replies` are constants per program, so each keeps only its own paths:
 * svcxdp_main (0, 0) has them all; svcxdp_external (1, 0) serves frontends and hands
 * every other packet to its tail svcxdp_ext_reply (1, 1), which matches replies and ICMP
 * errors. Split so that the verifier walks the external paths in two programs, not one
 * (the reply path's lookups in the pods' set table are inlined several times). */
static __always_inline int process(struct xdp_md *ctx, int external, int replies,
				   struct events *ev)
{
	void *data = (void *)(long)ctx->data;
	struct cursor c = { .pos = data, .end = (void *)(long)ctx->data_end };
	struct ethhdr *eth;
	struct iphdr *ip;

	int proto = parse_eth(&c, &eth);
	if (proto < 0) {
		ev->main = SVCXDP_CNT_DROP_MALFORMED;
		return XDP_DROP;
	}
	if (proto != ETH_P_IP_BE) {
		ev->main = SVCXDP_CNT_PASS_NON_IP;
		return XDP_PASS;
	}
	__u32 l3_off = c.pos - data;
	int vlan = l3_off != sizeof(struct ethhdr);

	int l4proto = parse_ipv4(&c, &ip);
	if (l4proto < 0) {
		ev->main = SVCXDP_CNT_DROP_MALFORMED;
		return XDP_DROP;
	}
	if (ip_is_later_fragment(ip))
		return handle_later_fragment(ctx, eth, ip, external, ev);
	/* What the datagram itself holds: Ethernet padding after it is not payload. */
	__u32 l4_len = bpf_ntohs(ip->tot_len) - ip->ihl * 4;
	if (l4proto == IPPROTO_ICMP) {
		if (external && !replies)
			return SVCXDP_VERDICT_EXT_REPLY;
		return handle_icmp(&c, ip, l4_len, external, ev);
	}

	struct l4_info l4 = {};
	if (l4proto == IPPROTO_TCP) {
		struct tcphdr *tcp = c.pos;
		/* As the kernel would: a header that does not fit the segment is dropped. */
		if ((void *)(tcp + 1) > c.end || l4_len < sizeof(*tcp) || tcp->doff < 5 ||
		    tcp->doff * 4 > l4_len) {
			ev->main = SVCXDP_CNT_DROP_MALFORMED;
			return XDP_DROP;
		}
		l4.sport = &tcp->source;
		l4.dport = &tcp->dest;
		l4.csum.check = &tcp->check;
		l4.tcp_flags = ((__u8 *)tcp)[13];
	} else if (l4proto == IPPROTO_UDP) {
		struct udphdr *udp = c.pos;
		__u32 udp_len = (void *)(udp + 1) > c.end ? 0 : bpf_ntohs(udp->len);
		/* The UDP length must cover its header and fit the datagram, except in a
		 * first fragment, whose length covers all the fragments. */
		if ((void *)(udp + 1) > c.end || l4_len < sizeof(*udp) || udp_len < sizeof(*udp) ||
		    (udp_len > l4_len && !(ip->frag_off & bpf_htons(IP_MF)))) {
			ev->main = SVCXDP_CNT_DROP_MALFORMED;
			return XDP_DROP;
		}
		l4.sport = &udp->source;
		l4.dport = &udp->dest;
		l4.csum.check = &udp->check;
		l4.csum.is_udp = 1;
	} else {
		ev->main = SVCXDP_CNT_PASS_NON_SERVICE;
		return XDP_PASS;
	}

	if (!replies) {
		struct svc_key sk = {};
		sk.vip = ip->daddr;
		sk.port = *l4.dport;
		sk.proto = l4proto;
		sk.scope = external ? SVCXDP_SCOPE_EXTERNAL : SVCXDP_SCOPE_CLUSTER;
		__u32 zero = 0;
		struct svc_value *svc = svc_scratch.lookup(&zero);
		if (!svc)
			return XDP_PASS;
		int found = svc_read(&sk, svc);
		if (!found && external) {
			/* A ClusterIP routed to the node from outside is served too. */
			sk.scope = SVCXDP_SCOPE_CLUSTER;
			found = svc_read(&sk, svc);
		}
		if (found > 0)
			return handle_service(ctx, eth, ip, &l4, svc, l3_off, vlan, external, ev);
		if (found < 0) {
			/* Its entry was being replaced or removed as we read it (and again,
			 * if read twice: svc_read): drop, the client retransmits (seen about
			 * once in a million new flows under continuous rewrites). */
			ev->main = SVCXDP_CNT_SLOT_MISS;
			return XDP_DROP;
		}
		if (external) {
			/* The node's own traffic (its connections' answers come to the same
			 * ports as SNAT replies) stops here: only a service backend's packet
			 * can be a reply the tail translates, and the tail's conntrack and set
			 * lookups would each cost it a cold line. */
			struct revnat_value rn;
			if (!ct_backend_of_any(ip->saddr, *l4.sport, l4proto, &rn)) {
				ev->main = SVCXDP_CNT_PASS_NON_SERVICE;
				return XDP_PASS;
			}
			return SVCXDP_VERDICT_EXT_REPLY;
		}
	}
	if (external) {
		int verdict = np_snat_reply(ctx, eth, ip, l4.sport, l4.dport, &l4.csum,
					    l4.tcp_flags, ev);
		if (verdict >= 0)
			return verdict;
	}
	return handle_reply(ctx, eth, ip, &l4, l3_off, vlan, ev);
}

static __always_inline int run(struct xdp_md *ctx, int external, int replies)
{
	struct events ev = { .main = SVCXDP_CNT_MAX, .extra = SVCXDP_CNT_MAX };
	int verdict = process(ctx, external, replies, &ev);
	if (external && !replies && verdict == SVCXDP_VERDICT_EXT_REPLY) {
		/* Counted by the tail, which decides. */
		np_tail.call(ctx, SVCXDP_TAIL_EXT_REPLY);
		counters_bump(SVCXDP_CNT_PASS_NON_SERVICE);
		return XDP_PASS;  /* no tail program (yet): not translated */
	}
	counters_bump(ev.main);
	if (ev.extra < SVCXDP_CNT_MAX)
		counters_bump(ev.extra);
	if (external && verdict == SVCXDP_VERDICT_NP_OUT) {
		/* The way out is a program of its own (nodeport.h): verified once, not once
		 * per state that reaches the end of this one. */
		np_tail.call(ctx, SVCXDP_TAIL_NP_OUT);
		np_pending_clear();
		return XDP_PASS;  /* no tail program (yet): the stack forwards */
	}
	return verdict;
}

/* Pod-facing interfaces: ClusterIP frontends. */
int svcxdp_main(struct xdp_md *ctx)
{
	return run(ctx, 0, 0);
}

/* The node's external interfaces: traffic from outside the cluster (nodeport.h). */
int svcxdp_external(struct xdp_md *ctx)
{
	if (for_another_host(ctx)) {
		counters_bump(SVCXDP_CNT_PASS_OTHER_HOST);
		return XDP_PASS;
	}
	return run(ctx, 1, 0);
}

/* Tail of svcxdp_external, in slot SVCXDP_TAIL_EXT_REPLY of np_tail: what came in from
 * outside and is not for a frontend (replies of backends elsewhere, ICMP errors, frames
 * that are nobody's). Parses the frame again; with the tail call, 6-12 ns more for these
 * packets (datapath-notes §16). */
int svcxdp_ext_reply(struct xdp_md *ctx)
{
	return run(ctx, 1, 1);
}

/* Tail of svcxdp_external and svcxdp_ext_reply, in slot SVCXDP_TAIL_NP_OUT of np_tail:
 * send a translated frame on. */
int svcxdp_np_out(struct xdp_md *ctx)
{
	struct events ev = { .main = SVCXDP_CNT_MAX, .extra = SVCXDP_CNT_MAX };
	int verdict = np_forward(ctx, &ev);
	if (ev.main < SVCXDP_CNT_MAX)
		counters_bump(ev.main);
	if (ev.extra < SVCXDP_CNT_MAX)
		counters_bump(ev.extra);
	return verdict;
}

/* tc egress of the devices the XDP entry points serve: the node's own answers for a
 * backend at one of its addresses (local_reply.h). */
int svcxdp_local_reply(struct __sk_buff *skb)
{
	return local_reply(skb);
}

/* tc ingress of the node's external interfaces: frames the external entry point
 * rewrote and could not send for want of a neighbour entry (handoff.h). */
int svcxdp_handoff(struct __sk_buff *skb)
{
	return handoff_take(skb);
}
