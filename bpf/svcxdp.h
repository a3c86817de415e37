/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * svcxdp.h — the one definition of every map key, value and constant.
 *
 * The XDP program includes this file; the Python control plane reads the very same
 * layouts through bcc's generated Table.Key/Leaf types and the #define constants
 * through controlplane/dataplane/layout.py, which parses this file. Nothing here is
 * written a second time anywhere else.
 *
 * Addresses and ports are stored in network byte order, exactly as they sit in a
 * packet, so the datapath compares and copies them without swapping.
 *
 * Constants are plain `#define SVCXDP_<NAME> <integer>` lines so that the Python
 * parser stays trivial: keep them that way.
 */
#ifndef SVCXDP_H
#define SVCXDP_H

/* ---- service scopes (svc_key.scope) ----------------------------------------- */
#define SVCXDP_SCOPE_CLUSTER 0   /* ClusterIP: traffic from pods and nodes */
#define SVCXDP_SCOPE_EXTERNAL 1  /* NodePort (one entry per node address), externalIPs and
				  * LoadBalancer IPs: looked up by the external entry point
				  * (svcxdp_external, on the node's external interfaces) */

/* ---- backend selection algorithms (svc_value.algorithm) ---------------------- */
#define SVCXDP_ALG_RANDOM 0      /* kube-proxy iptables/nftables: uniform random */
#define SVCXDP_ALG_RR 1          /* ipvs default: exact round robin */
#define SVCXDP_ALG_MAGLEV 2      /* consistent hashing (csrc/maglev.c) */
#define SVCXDP_ALG_WRR 3         /* rr over slots the writer expanded by weight */
#define SVCXDP_ALG_SH 4          /* source-address hash */
#define SVCXDP_ALG_DH 5          /* destination-address hash */
#define SVCXDP_ALG_LC 6          /* least connections (LC..NQ: counted family) */
#define SVCXDP_ALG_WLC 7         /* least connections / weight */
#define SVCXDP_ALG_SED 8         /* shortest expected delay: (conns + 1) / weight */
#define SVCXDP_ALG_NQ 9          /* never queue: an idle backend, else sed */

/* ---- backend selection parameters --------------------------------------------- */
/* The counted family compares at most this many slots per new flow (a bounded
 * loop the verifier walks; 64 exceeds its budget). Larger services are sampled
 * (lc.h). */
#define SVCXDP_LC_MAX_SCAN 32
/* Maglev inner tables are created with BPF_F_INNER_MAP so that each service's
 * table may have its own size M (kernel >= 5.10). */
#define SVCXDP_MAGLEV_INNER_FLAGS 4096

/* ---- service flags (svc_value.flags) ------------------------------------------ */
#define SVCXDP_SVC_F_AFFINITY 1  /* sessionAffinity: ClientIP */
#define SVCXDP_SVC_F_TERMINATING_ONLY 2  /* no backend is ready: the slots hold the
					  * terminating ones (kube-proxy's fallback) */
#define SVCXDP_SVC_F_SOURCE_RANGES 4  /* loadBalancerSourceRanges: only clients inside the
				       * service's `source_ranges` entries, others dropped */
#define SVCXDP_SVC_F_LOCAL_DROP 8     /* a Local traffic policy with endpoints elsewhere
				       * only: count 0 drops (kube-proxy), not rejects */

/* ---- backend states (backend.state); 0 marks an unused slot of the array ------ */
#define SVCXDP_BACKEND_UNUSED 0
#define SVCXDP_BACKEND_ACTIVE 1
#define SVCXDP_BACKEND_TERMINATING 2  /* existing flows drain, no new ones */

/* Backend id 0 is reserved: "no backend". Real ids start at 1. */
#define SVCXDP_BACKEND_ID_INVALID 0

/* ---- conntrack ---------------------------------------------------------------- */
#define SVCXDP_CT_DIR_FORWARD 0  /* client -> VIP:port, value holds the backend */
#define SVCXDP_CT_DIR_REPLY 1    /* backend -> client, value holds the VIP:port */
#define SVCXDP_CT_DIR_SNAT 2     /* backend -> node address:SNAT port (nodeport.h): holds
				  * the VIP:port (nat_*) and the client (peer_*) */
#define SVCXDP_CT_F_CLOSING 1    /* TCP FIN or RST seen; closed (both sides, below): a bare
				  * SYN reopens the tuple, and the close timeout */
/* Which side of a forward entry's connection has closed: one side's FIN alone leaves
 * it half-closed, and the other side may go on sending after a pause (a client that
 * shuts down its sending side and waits for the answer), so the flow keeps the
 * half-close timeout (an hour, kube-proxy's CLOSE_WAIT) and stays its tuple's
 * connection; both FINs, or a RST (which sets both), close it. An entry
 * with CLOSING and neither bit is closed: a reply or SNAT entry, which sees one side
 * only and is kept by its flow's forward entry while that lives (ct_gc_needed,
 * handle_reply, np_snat_reply) — and entries written before these bits existed. */
#define SVCXDP_CT_F_FIN_CLIENT 8
#define SVCXDP_CT_F_FIN_BACKEND 16
#define SVCXDP_CT_F_FIN_BOTH (SVCXDP_CT_F_FIN_CLIENT | SVCXDP_CT_F_FIN_BACKEND)

/* ---- reverse NAT (rev_nat.flags, backend.flags) ------------------------------------ */
#define SVCXDP_REVNAT_F_SHARED 1  /* the address serves several frontends: a reply is
				   * first looked up as a reply entry in conntrack */
#define SVCXDP_BACKEND_F_REPLY_ENTRY 1  /* flows to this backend record a reply entry:
					 * its address is shared (REVNAT_F_SHARED), kept here
					 * by the writer so a new flow needs no rev_nat lookup */
#define SVCXDP_CT_F_COUNTED 2    /* holds one of its backend's active-connection counts */
#define SVCXDP_CT_F_SNAT 4       /* forward entry of an external flow to a backend behind the
				  * interface it came in on: source NATed to peer_ip:peer_port */

/* ---- source NAT of external flows to other nodes (nodeport.h) ---------------------- */
/* SNAT ports: 32768-65535, as Cilium's NodePort SNAT (above the NodePort range). One
 * range per (backend address:port, node address), as MASQUERADE's; 4096 ports ran out
 * under a new-flow flood (bench_nodeport.py). The node's own connections to the same
 * backend address and port could pick the same port from its ephemeral range: Cilium
 * tracks those in its SNAT table, this datapath does not see them (docs/architecture.md).
 * The count is a power of two. */
#define SVCXDP_SNAT_PORT_MIN 32768
#define SVCXDP_SNAT_PORT_COUNT 32768
#define SVCXDP_SNAT_TRIES 32     /* ports probed per new flow before giving up (counted) */
/* A SNAT port held by a flow that has not been confirmed (no second packet from its
 * client, conntrack.h) is taken by another flow once its reply entry is this old (the
 * backend's answers refresh it); under a flood younger ones are taken too, the oldest of
 * the ports probed first. A confirmed flow's port is never taken. */
#define SVCXDP_SNAT_RECLAIM_MS 2000
#define SVCXDP_SNAT_RECLAIM_AFTER 8  /* probes, after which the oldest unconfirmed holder met is taken */
#define SVCXDP_DEFAULT_SOURCE_RANGES 16384  /* loadBalancerSourceRanges entries, all services */
/* A frame the external entry point rewrote (source-NATed, or an answer translated back
 * to a client: handoff.h says which) whose next hop has no neighbour entry yet goes to
 * the tc ingress program of the same device with a note in `handoff_notes`, keyed by
 * what of the frame GRO leaves as it was on the way there (GRO merges a flow's segments
 * into the first one's headers, rewriting the IPv4 length and checksum): its addresses,
 * IPv4 id and protocol, the four bytes after a 20-byte header (the ports of TCP and
 * UDP) and TCP's sequence number. Only the XDP program writes notes. */
struct svcxdp_handoff_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 protocol;
	__u8 pad;
	__be32 ports;   /* 0 when the header has options or the frame ends first */
	__be32 seq;     /* TCP's; 0 for any other protocol */
};
struct svcxdp_handoff {
	__u64 at;        /* bpf_ktime_get_coarse_ns() of the last frame noted */
	__u32 ifindex;   /* the device the FIB named */
	__u32 count;     /* frames noted and not yet taken (signed: <= 0 none) */
};
/* A note older than this is stale (its frame reached tc within microseconds, or never
 * will); tc looks notes up only this long after the last one was written. */
#define SVCXDP_HANDOFF_WINDOW_NS 1000000000ULL
#define SVCXDP_HANDOFF_NOTES 4096

/* ---- global counters (index into the `counters` per-CPU array) ---------------- */
#define SVCXDP_CNT_PASS_NON_IP 0       /* not IPv4: passed untouched */
#define SVCXDP_CNT_PASS_NON_SERVICE 1  /* IPv4 not for a service and not a reply */
#define SVCXDP_CNT_REVNAT 2            /* replies reverse-NATed to the VIP */
#define SVCXDP_CNT_CT_NEW 3            /* new flows created */
#define SVCXDP_CNT_CT_HIT 4            /* forward packets of known flows */
#define SVCXDP_CNT_CT_STALE 5          /* flows whose backend vanished: reselected */
#define SVCXDP_CNT_REJECT 6            /* RST / ICMP unreachable sent (no endpoints) */
#define SVCXDP_CNT_DROP_MALFORMED 7    /* truncated or inconsistent headers; TCP flags no flow
					* starts with (ct_may_start); to a service without
					* endpoints, a frame no reject may answer (reject.h) */
#define SVCXDP_CNT_FRAG_NAT 8          /* non-first fragments translated */
#define SVCXDP_CNT_FRAG_UNKNOWN 9     /* non-first fragment of no known flow: passed */
#define SVCXDP_CNT_ICMP_NAT 10         /* ICMP errors quoting a NATed flow, translated */
#define SVCXDP_CNT_SLOT_MISS 11        /* slot without backend, or with another service's (read
					* while the writer replaced it): dropped */
#define SVCXDP_CNT_FIB_REDIRECT 12     /* redirected to the egress device after a FIB lookup */
#define SVCXDP_CNT_MAGLEV_FALLBACK 13  /* Maglev table missing or mid-resize: hashed over slots */
/* ClientIP affinity, one of these per new flow of an affinity service (affinity.h). */
#define SVCXDP_CNT_AFFINITY_HIT 14     /* sent to the client's remembered backend */
#define SVCXDP_CNT_AFFINITY_NEW 15     /* no entry for the client: selected, entry inserted */
#define SVCXDP_CNT_AFFINITY_EXPIRED 16 /* entry idle past the timeout, or from before the
					* service's last switch to ClientIP: reselected */
#define SVCXDP_CNT_AFFINITY_STALE 17   /* its backend left the match set: rebalanced */
/* Idle-flow GC (ctgc.h), run by the agent: conntrack entries past their timeout. */
#define SVCXDP_CNT_CT_GC_DELETED 18    /* removed ahead of need (LRU eviction then not needed) */
#define SVCXDP_CNT_CT_GC_KEPT 19       /* a candidate found live when re-checked: kept */
/* Socket-level load balancing, cgroup hooks (sock.h). */
#define SVCXDP_CNT_SOCK_XLATE 20       /* connect()/sendmsg() to a service: backend chosen */
#define SVCXDP_CNT_SOCK_REJECT 21      /* ... of a service without endpoints: ECONNREFUSED */
#define SVCXDP_CNT_SOCK_REVNAT 22      /* recvmsg()/getpeername() shown the service address */
#define SVCXDP_CNT_HAIRPIN 23          /* a client sent to itself: source NATed to HAIRPIN_IP */
/* Traffic from outside (nodeport.h). */
#define SVCXDP_CNT_SNAT_NEW 24         /* new external flow source-NATed to a node address */
#define SVCXDP_CNT_SNAT_REPLY 25       /* reply to a source-NATed flow, both translations reversed */
#define SVCXDP_CNT_SNAT_EXHAUSTED 26   /* no free SNAT port after SNAT_TRIES probes: dropped */
#define SVCXDP_CNT_DROP_SOURCE_RANGE 27 /* client outside loadBalancerSourceRanges: dropped
					 (a node's socket: its connect()/sendmsg() fails, EPERM) */
#define SVCXDP_CNT_DROP_NO_LOCAL 28    /* Local traffic policy, no local endpoint: dropped */
#define SVCXDP_CNT_XDP_TX 29           /* sent back out of the interface it came in on */
#define SVCXDP_CNT_SNAT_RECLAIMED 30   /* SNAT port taken from an unconfirmed flow (nodeport.h) */
#define SVCXDP_CNT_REDIRECT_REFUSED 31 /* routed, but the egress device is not in tx_ports: to the stack */
#define SVCXDP_CNT_FIB_CACHED 32       /* sent on with a cached FIB result (fib.h): no lookup */
#define SVCXDP_CNT_FRAG_NEEDED 33      /* translated, too large for its way out with DF set: ICMP
					* "fragmentation needed" quoting it as sent (reject.h) */
#define SVCXDP_CNT_LOCAL_REVNAT 34     /* an answer of a backend at the node's own address, made
					* by the node: reverse-NATed on its way out (tc egress,
					* local_reply.h) */
#define SVCXDP_CNT_REJECT_LIMITED 35   /* a reject over the CPU's reject budget (reject.h):
					* dropped unanswered */
#define SVCXDP_CNT_NEIGH_NOTED 36      /* translated, its next hop not resolved yet: noted
					* for tc (handoff.h) */
#define SVCXDP_CNT_NEIGH_HANDOFF 37    /* ... and sent by tc with the kernel's neighbour
					* resolution (fewer than noted: frames lost on the way,
					* or merged by GRO, one handoff per merged frame) */
/* 38: retired (neigh_no_meta, when notes rode in XDP metadata) */
#define SVCXDP_CNT_PASS_OTHER_HOST 39  /* external: a frame for another host's MAC address
					* (unicast a switch or bridge flooded): the stack's,
					* which drops it (otherhost.h) */
#define SVCXDP_CNT_NEIGH_NOTE_FAILED 40 /* translated, its next hop not resolved yet, but
					* its note could not be written: to the stack untouched,
					* which drops it if it carries one of the node's
					* addresses (handoff.h) */
#define SVCXDP_CNT_MAX 41

/* ---- hairpin ------------------------------------------------------------------ */
/* A pod whose Service picks the pod itself would receive its own address as source
 * and drop the packet (a martian). Such packets get this source instead, a
 * link-local address no node or pod holds (Cilium uses one too; kube-proxy
 * masquerades), and the replies to it are turned back. Host byte order. */
#define SVCXDP_HAIRPIN_IP 0xa9fe2a01   /* 169.254.42.1 */

/* ---- default sizes and timeouts (overridable with -D cflags from Python) ------ */
#define SVCXDP_DEFAULT_MAX_SERVICES 65536
#define SVCXDP_DEFAULT_MAX_BACKENDS 262144
#define SVCXDP_DEFAULT_MAX_SLOTS 262144
#define SVCXDP_DEFAULT_CT_SIZE 1048576
/* Flows that have sent one packet wait in a table of their own (conntrack.h): a
 * flood of spoofed first packets churns it, not conntrack. Both such tables are 8-way
 * sets of 392 bytes (a power of two of entries). External clients' flows wait in
 * ct_unconfirmed, CT_SIZE / this (524,288 entries, 24.5 MiB, about the memory of the
 * LRU table of 262,144 it replaced): large, so a far client's handshake outlives a
 * flood. Pods' flows, whose round trips stay inside the cluster, wait in
 * ct_unconfirmed_pod, at most SVCXDP_DEFAULT_CT_UNCONFIRMED_POD entries (1.5 MiB, the
 * memory of the LRU table of 16,384 it replaced): small enough to stay near the CPU,
 * where a first packet's insert costs a fraction of one into a table that never stays
 * in cache (datapath-notes §11, §15, §20). */
#define SVCXDP_CT_UNCONFIRMED_SHARE 2
#define SVCXDP_DEFAULT_CT_UNCONFIRMED_POD 32768
/* Slots of ct_udp_recent (conntrack.h, ct_udp_absent): one byte per tuple hash, 64 KiB,
 * a power of two. Small enough to stay in cache beside ct_unconfirmed_pod; each UDP
 * flow live in conntrack marks one slot, so at 10,000 of them ~14% of slots say
 * "maybe" and the rest still save their first packets the conntrack miss. */
#define SVCXDP_CT_RECENT_SLOTS 65536
/* Its tags count epochs (conntrack.h: at least a UDP timeout each) mod this, a power of
 * two (tags 1..128; 0: never stamped), and a slot this many epochs old or more vouches
 * that no live entry hashes to it. */
#define SVCXDP_CT_RECENT_TAGS 128
#define SVCXDP_CT_RECENT_SURE_AGE 3
#define SVCXDP_DEFAULT_FRAG_SIZE 8192
#define SVCXDP_DEFAULT_AFFINITY_SIZE 262144  /* client IPs x affinity services (docs/affinity.md) */
#define SVCXDP_DEFAULT_SOCK_REVNAT_SIZE 262144 /* (socket, backend) pairs, sock.h */
#define SVCXDP_DEFAULT_TCP_TIMEOUT_S 21600   /* established TCP: 6 h, as Cilium */
#define SVCXDP_DEFAULT_TCP_CLOSE_TIMEOUT_S 10 /* closed: both FINs, or a RST */
#define SVCXDP_DEFAULT_TCP_HALF_CLOSE_TIMEOUT_S 3600 /* one side's FIN: kube-proxy's CLOSE_WAIT */
#define SVCXDP_DEFAULT_UDP_TIMEOUT_S 60      /* UDP idle */
/* The rejects the program answers itself (reject.h: RSTs, port unreachables) are
 * rate-limited with the kernel's defaults for its ICMP errors (net.ipv4.icmp_msgs_per_sec
 * 1000, icmp_msgs_burst 50), but per CPU (the kernel's bucket is one per node): so a flood
 * with spoofed sources to a service without endpoints cannot make a node a reflector at
 * line rate. */
#define SVCXDP_DEFAULT_REJECT_RATE 1000      /* rejects answered per second, per CPU */
#define SVCXDP_DEFAULT_REJECT_BURST 50       /* rejects answered in a burst, per CPU */
#define SVCXDP_MAX_REJECT_RATE 1000000000    /* a token every nanosecond at most */
#define SVCXDP_MAX_REJECT_BURST 4294967296   /* far from the u64 the bucket counts in */
/* Devices a translated frame may be redirected to (fib.h), by ifindex: ifindexes at or
 * above this are never redirect targets (their frames go through the stack). */
#define SVCXDP_TX_PORTS_SIZE 65536
/* The FIB result cache (fib.h): per CPU, direct-mapped by (destination, ingress
 * device), 2^BITS slots of 40 bytes (160 KiB per CPU). An entry is used while the
 * generation in fib_gen is the one it was looked up under (the agent's route watcher,
 * dataplane/fibwatch.py, moves it on every change of routes, neighbours, links,
 * addresses, rules or forwarding settings) and for at most TTL_MS, a bound on staleness
 * that holds even with no agent running. */
#define SVCXDP_FIB_CACHE_BITS 12
#define SVCXDP_FIB_CACHE_TTL_MS 1000
/* A first fragment's record translates later fragments this long, as the kernel
 * keeps a reassembly queue (net.ipv4.ipfrag_time): after that the IP id may be
 * reused by another datagram, which must not inherit the old translation. */
#define SVCXDP_FRAG_TIMEOUT_S 30

/* ---- idle-flow GC (ctgc.h) ------------------------------------------------------ */
/* The agent walks conntrack and hands the entries it judged expired to
 * the svcxdp_ct_gc program, SVCXDP_CT_GC_BATCH keys per BPF_PROG_TEST_RUN call, as
 * the call's data: a struct ct_gc_request followed by `count` struct ct_key. The
 * program judges every key again against the entry as it is then and removes only
 * entries past their timeout by more than SVCXDP_CT_GC_GRACE_S (ctgc.h). */
#define SVCXDP_CT_GC_BATCH 32
#define SVCXDP_CT_GC_GRACE_S 2
#define SVCXDP_CT_GC_CONFIRMED 0    /* ct_gc_request.table: conntrack (the unconfirmed sets need no sweep) */
/* ct_gc_request.op. LOCATE deletes nothing: it writes over each key slot the address of
 * the entry's element if the entry is dead (0 otherwise), so the agent can delete in
 * address order — freed elements then go back to the LRU's free list in memory order,
 * and the inserts that reuse them walk memory the way a fresh map's do (ctgc.h). */
#define SVCXDP_CT_GC_OP_DELETE 0
#define SVCXDP_CT_GC_OP_LOCATE 1

struct ct_gc_request {
	__u32 table;     /* SVCXDP_CT_GC_* */
	__u32 count;     /* keys that follow, at most SVCXDP_CT_GC_BATCH */
	__u32 deleted;   /* out: entries removed */
	__u32 kept;      /* out: entries found live (or still needed) and kept */
	__u32 op;        /* SVCXDP_CT_GC_OP_* */
	__u32 reserved;
};

/* Key of the `services` map: one entry per (VIP, port, protocol, scope). */
struct svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;   /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 scope;   /* SVCXDP_SCOPE_* */
};

struct svc_value {
	__u32 svc_id;            /* index for slots, stats, rr state; never 0 */
	__u16 count;             /* backends in slots 1..count; 0 = reject */
	__u8 algorithm;          /* SVCXDP_ALG_* */
	__u8 flags;              /* SVCXDP_SVC_F_* */
	__u32 affinity_timeout;  /* seconds, with SVCXDP_SVC_F_AFFINITY */
	__u32 table_size;        /* Maglev: entries M of its table; 0 otherwise */
	__u32 affinity_gen;      /* ClientIP period: affinity entries of another one are
				  * ignored (a switch to None and back drops them, O(1)) */
	/* The entry's own key, written by the writer with the rest. The kernel reuses
	 * a replaced or deleted hash element at once (preallocated or not), so a packet
	 * holding a pointer into `services` may find another frontend's value there:
	 * the datapath copies the value and uses it only if these match its key. */
	__be32 key_vip;
	__be16 key_port;
	__u8 key_proto;
	__u8 key_scope;
};

/* Key of the `slots` map: slot 1..count of a service -> backend id. For wrr the
 * writer expands weights into a cycle of slots, so count is the cycle length. */
struct slot_key {
	__u32 svc_id;
	__u32 slot;
};

/* Value of the `backends` array, indexed by backend id. One entry per
 * (service, endpoint address) so that a flow can check its backend still serves
 * its service with one lookup. */
struct backend {
	__be32 ip;
	__be16 port;
	__u8 state;    /* SVCXDP_BACKEND_* */
	__u8 proto;
	__u32 svc_id;
	__u16 weight;
	__u8 flags;    /* SVCXDP_BACKEND_F_* */
	__u8 reserved;
};

/* Key of the `rev_nat` map: a backend's address. A reply from it is turned back
 * into the frontend it serves, once its forward flow is found in conntrack, so a
 * new flow writes one conntrack entry, not two. */
struct revnat_key {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 reserved;
};

struct revnat_value {
	__be32 vip;       /* the frontend the address answers for (the first, if shared) */
	__be16 vport;
	__u8 flags;       /* SVCXDP_REVNAT_F_* */
	__u8 key_check;   /* svcxdp_revnat_check (flowhash.h) of the entry's own key; 0: none */
};

/* Conntrack: the forward entry of a flow (client -> VIP:port, holding the backend);
 * a reply entry (backend -> client, holding the VIP) only for backends whose
 * address serves several frontends (SVCXDP_REVNAT_F_SHARED). */
struct ct_key {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;      /* SVCXDP_CT_DIR_* */
	__u16 reserved;
};

struct ct_value {
	__u64 last_seen;  /* bpf_ktime_get_coarse_ns() of the last refresh */
	__be32 nat_ip;    /* forward: backend ip; reply: VIP */
	__be16 nat_port;  /* forward: backend port; reply: service port */
	__u8 flags;       /* SVCXDP_CT_F_* */
	__u8 reserved;
	__u32 backend_id;
	__u32 svc_id;
	__be32 peer_ip;   /* SNATed forward: the node address:port it left with;
			   * SNAT reply (DIR_SNAT): the client's address:port */
	__be16 peer_port;
	__u16 reserved2;
};

/* The unconfirmed tables (ct_unconfirmed_pod, ct_unconfirmed) are arrays of sets rather
 * than LRU hashes (conntrack.h, "the unconfirmed tables"): a flow's entry is one of the
 * SVCXDP_CT_SET_WAYS slots of the set its key hashes to, and a new flow takes the set's
 * next slot in turn (`next`, a ring). Its insert touches that set's lines only, full
 * table or not; an LRU hash evicts cold entries of its own choosing, 128 at a time. */
#define SVCXDP_CT_SET_WAYS 8
struct ct_slot {
	struct ct_key key;      /* proto 0: a free slot (no tracked flow has protocol 0) */
	struct ct_value value;
};

struct ct_set {
	struct bpf_spin_lock lock;   /* held for every write, and to copy a slot out */
	__u32 next;                  /* the slot the set's next new flow takes (mod the ways) */
	struct ct_slot slot[SVCXDP_CT_SET_WAYS];
};

/* ct_udp_recent's only value (conntrack.h, ct_udp_absent): a tag per tuple hash, the
 * epoch of the slot's last stamp mod SVCXDP_CT_RECENT_TAGS, plus 1 (0: never stamped). One
 * value of bytes, not an array map of them: an array map rounds each element up to 8
 * bytes, which made 64 KiB of tags 512 KiB of memory to keep in cache. */
struct ct_udp_recent {
	__u8 tag[SVCXDP_CT_RECENT_SLOTS];
};

/* Non-first IPv4 fragments carry no ports: the first fragment records how its
 * datagram was translated, keyed by what every fragment carries. */
struct frag_key {
	__be32 src;
	__be32 dst;
	__be16 id;
	__u8 proto;
	__u8 reserved;
};

struct frag_value {
	__u64 created;   /* bpf_ktime_get_coarse_ns() of the first fragment: the entry
			  * serves later fragments for SVCXDP_FRAG_TIMEOUT_S only */
	__be32 nat_ip;   /* new destination (forward) or source (reply) address */
	__be32 peer_ip;  /* source-NATed flows: the other address too (new source of a
			  * forward fragment, new destination of a reply); 0: none */
	__u8 dir;        /* SVCXDP_CT_DIR_* */
	__u8 reserved[3];
};

/* A frame's addresses and ports as its sender sent them, before any translation. An
 * ICMP error the program sends about the frame quotes them (the sender finds its
 * socket by them) and comes from the address it was sent to (reject.h). */
struct sent_tuple {
	__be32 src;
	__be32 dst;
	__be16 sport;
	__be16 dport;
};

/* An external flow's packet, from svcxdp_external to its tail program (nodeport.h),
 * which decides on SNAT; per CPU, valid only across that one tail call. */
struct np_pending {
	__be32 vip;      /* the frontend the client addressed */
	__be16 vport;
	__u8 mode;       /* SVCXDP_NP_* : what the tail has to do for this packet */
	__u8 reserved1;
	__u32 svc_id;
	__be32 client;   /* the flow's client (SVCXDP_NP_CHECK: the packet is SNATed already) */
	__be16 cport;
	__u8 reply_entry; /* SVCXDP_NP_NEW: its backend needs a reply entry (conntrack.h), which
			   * the tail writes unless it source-NATs the flow */
	__u8 confirmed;   /* the flow's entry is in conntrack (SVCXDP_NP_NEW: written over the
			   * tuple's dead one; SVCXDP_NP_CHECK: confirmed before or by this
			   * packet), else in ct_unconfirmed */
	/* The SNAT port search's findings (np_snat_alloc): kept in map memory, untracked
	 * by the verifier, so every path through one probe reaches the next, and the code
	 * after the search, in the same state (as lc_best). */
	__s64 oldest_age;
	__u32 oldest_port;
	__u32 pick_port;  /* the port it settled on */
	__u32 dead_port;  /* a port whose conntrack entry is past its timeout */
	__u8 pick;        /* how (NP_PICK_*, nodeport.h) */
	__u8 vlan;        /* 4 when the frame carries a VLAN tag (its IP header is 4 bytes on) */
	__u8 has_sent;    /* `sent` is this packet's: any translated TCP/UDP packet the tail
			   * sends on, whatever the mode */
	__u8 reserved3;
	struct sent_tuple sent;
};
#define SVCXDP_NP_NONE 0
#define SVCXDP_NP_NEW 1    /* a new flow's first packet: SNAT or not */
#define SVCXDP_NP_CHECK 2  /* a packet of a SNATed flow (each while unconfirmed, else on a
			    * refresh or close): does it still hold its port (nodeport.h,
			    * np_snat_kept)? */

/* Key of the `source_ranges` LPM trie: a LoadBalancer frontend's allowed client
 * CIDRs. prefixlen counts the svc_id's 32 bits plus the CIDR's length. */
struct src_range_key {
	__u32 prefixlen;
	__u32 svc_id;
	__be32 addr;
};

/* Round-robin cursor, one per service id; the lock makes the order exact when
 * several CPUs take new flows at once (bcc's clang cannot emit atomic fetch-add). */
struct rr_state {
	struct bpf_spin_lock lock;
	__u32 next;
};

/* The least-connections scan's running best (lc.h), kept in a per-CPU map value
 * rather than in registers: the verifier tracks no values in map memory, so every
 * path through an iteration reaches the next one in the same state and is pruned
 * (in registers, a 32-slot scan multiplied the states past the verifier's budget). */
struct lc_best {
	__u64 conns;
	__u64 weight;
	__u32 id;
	__u32 pad;
};

/* ClientIP session affinity: one entry per (frontend, client address), written
 * when a new flow of an affinity service selects a backend, refreshed by each later
 * new flow that uses it (not per packet; docs/affinity.md). */
struct affinity_key {
	__u32 svc_id;
	__be32 client;
};

struct affinity_value {
	__u64 last_used;   /* bpf_ktime_get_coarse_ns() of the last new flow it served */
	__u32 backend_id;
	__u32 gen;         /* svc_value.affinity_gen when written */
};

/* Socket-level load balancing (sock.h): what a socket's connect() or sendmsg() was
 * translated to, so that its recvmsg() and getpeername() show the service again.
 * Keyed by socket cookie and backend, as one unconnected UDP socket may talk to
 * several backends. Per socket, not per flow: no conntrack entry, no packet NAT. */
struct sock_revnat_key {
	__u64 cookie;     /* bpf_get_socket_cookie() */
	__be32 ip;        /* backend address and port the socket was sent to */
	__be16 port;
	__u8 proto;
	__u8 reserved;
};

struct sock_revnat_value {
	__be32 vip;       /* the service address the application asked for */
	__be16 vport;
	__u16 flags;      /* SVCXDP_SOCK_F_* */
	__u32 svc_id;
	__u32 backend_id;
};

#define SVCXDP_SOCK_F_COUNTED 1  /* holds one of its backend's connection counts (lc.h),
				   * given back when the socket is released */

/* Settings of the socket hooks, one entry written by the agent. */
struct sock_config {
	__be32 client_ip;  /* the address ClientIP affinity keys a local socket by when it
			    * is not bound to one: the node's address, as its packets
			    * would carry on the XDP path */
	__u32 reserved;
	__u64 netns_cookie; /* the node's network namespace (the agent's): its sockets are
			     * the node's own, whose source client_ip stands for; a socket
			     * of another (a pod's) is not, and a LoadBalancer IP with
			     * source ranges is left to its packets (sock.h). 0: unknown,
			     * every socket taken as the node's */
};

/* The FIB result cache's switch and generation, one entry written by the agent (fib.h,
 * dataplane/fibwatch.py). gen 0: the cache is off and every frame is looked up (no
 * watcher, or routing the cache cannot stand for: policy rules, multipath routes). */
struct fib_gen {
	__u32 gen;
	__u32 reserved;
};

/* One CPU's budget of reject answers (reject.h reject_allowed): tokens left, and the
 * time up to which tokens have been earned. */
struct reject_budget {
	__u64 earned_ns;
	__u64 tokens;
};

/* One slot of the per-CPU FIB result cache (fib.h): the next hop a successful
 * bpf_fib_lookup() gave for frames from `iif` to `dst`. */
struct fib_cache_entry {
	__be32 dst;
	__u32 iif;        /* ingress device: the lookup checks its forwarding setting */
	__u32 gen;        /* fib_gen.gen when looked up */
	__u32 ifindex;    /* egress device */
	__be32 src;       /* the source address the FIB chose (NodePort's SNAT address); 0:
			   * not asked (the pods' path looks up without BPF_FIB_LOOKUP_SRC) */
	__u8 smac[6];
	__u8 dmac[6];
	__u16 ok_len;     /* the route's MTU: no larger frame is sent without a lookup
			   * (which checks it) */
	__u16 pad;
	__u32 stamp;      /* when looked up: the coarse clock in units of 2^20 ns (about
			   * a millisecond), truncated to 32 bits */
};

/* Per-service counters (per-CPU array indexed by svc_id). */
struct svc_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
	__u64 rejects;
};

/* Per-backend counters (per-CPU array indexed by backend id): new flows sent to it,
 * so a user sees the spread over a service's endpoints. The writer zeroes an id's
 * counters when it hands the id to a new backend. */
struct backend_stats {
	__u64 new_flows;
};

#endif /* SVCXDP_H */
