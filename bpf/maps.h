/* SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause) */
/*
 * maps.h — every map of the datapath, one definition each.
 * Sizes come from -D cflags set by controlplane/dataplane/program.py; with
 * SVCXDP_PIN_DIR defined the maps are pinned there (bcc reuses a pinned map whose
 * path exists, which is how a restarted agent adopts the live dataplane).
 */
#ifndef SVCXDP_MAPS_H
#define SVCXDP_MAPS_H

#include "svcxdp.h"

#ifndef SVCXDP_MAX_SERVICES
#define SVCXDP_MAX_SERVICES SVCXDP_DEFAULT_MAX_SERVICES
#endif
/* Service ids run 1..SVCXDP_MAX_SERVICES (0 means none), so the arrays indexed by
 * id have one entry more. */
#define SVCXDP_SVC_ID_SLOTS (SVCXDP_MAX_SERVICES + 1)
#ifndef SVCXDP_MAX_BACKENDS
#define SVCXDP_MAX_BACKENDS SVCXDP_DEFAULT_MAX_BACKENDS
#endif
/* One more than the highest possible CPU id (backend_stats has a row per CPU id); the
 * loader gives it (pinned.py cpu_id_limit). */
#ifndef SVCXDP_NR_CPUS
#error "SVCXDP_NR_CPUS: one more than the highest possible CPU id, given by the loader (config.py cflags)"
#endif
#ifndef SVCXDP_MAX_SLOTS
#define SVCXDP_MAX_SLOTS SVCXDP_DEFAULT_MAX_SLOTS
#endif
#ifndef SVCXDP_CT_SIZE
#define SVCXDP_CT_SIZE SVCXDP_DEFAULT_CT_SIZE
#endif
#ifndef SVCXDP_CT_UNCONFIRMED_SIZE
#define SVCXDP_CT_UNCONFIRMED_SIZE (SVCXDP_CT_SIZE / SVCXDP_CT_UNCONFIRMED_SHARE)
#endif
#ifndef SVCXDP_CT_UNCONFIRMED_POD_SIZE
#define SVCXDP_CT_UNCONFIRMED_POD_SIZE SVCXDP_DEFAULT_CT_UNCONFIRMED_POD
#endif
#ifndef SVCXDP_FRAG_SIZE
#define SVCXDP_FRAG_SIZE SVCXDP_DEFAULT_FRAG_SIZE
#endif

#ifndef SVCXDP_AFFINITY_SIZE
#define SVCXDP_AFFINITY_SIZE SVCXDP_DEFAULT_AFFINITY_SIZE
#endif

#ifndef SVCXDP_SOCK_REVNAT_SIZE
#define SVCXDP_SOCK_REVNAT_SIZE SVCXDP_DEFAULT_SOCK_REVNAT_SIZE
#endif
#ifndef SVCXDP_SOURCE_RANGES_SIZE
#define SVCXDP_SOURCE_RANGES_SIZE SVCXDP_DEFAULT_SOURCE_RANGES
#endif

#ifdef SVCXDP_PIN_DIR
#define SVCXDP_MAP(type, K, V, name, max) \
	BPF_TABLE_PINNED(type, K, V, name, max, SVCXDP_PIN_DIR "/" #name)
#define SVCXDP_F_MAP(type, K, V, name, max, flags) \
	BPF_TABLE_PINNED(type, K, V, name, max, SVCXDP_PIN_DIR "/" #name, flags)
#else
#define SVCXDP_MAP(type, K, V, name, max) BPF_TABLE(type, K, V, name, max)
#define SVCXDP_F_MAP(type, K, V, name, max, flags) BPF_F_TABLE(type, K, V, name, max, flags)
#endif

/* (VIP, port, proto, scope) -> service: the only lookup non-reply traffic pays. */
SVCXDP_MAP("hash", struct svc_key, struct svc_value, services, SVCXDP_MAX_SERVICES);
/* (svc_id, slot 1..count) -> backend id, for random and round-robin picks. */
SVCXDP_MAP("hash", struct slot_key, __u32, slots, SVCXDP_MAX_SLOTS);
/* backend id -> address; an array because ids are dense and id 0 is reserved.
 * Mmapable: the agent writes and reads its rows through a mapping (mapped.py), one
 * store per row instead of a copy per element in BPF_MAP_UPDATE_BATCH. */
SVCXDP_F_MAP("array", __u32, struct backend, backends, SVCXDP_MAX_BACKENDS, BPF_F_MMAPABLE);
/* backend address -> the frontend its replies come from (see struct revnat_key). */
SVCXDP_MAP("hash", struct revnat_key, struct revnat_value, rev_nat, SVCXDP_MAX_BACKENDS);
/* Service flows (forward entries; reply entries for shared addresses); LRU so a
 * full table evicts the oldest. */
SVCXDP_MAP("lru_hash", struct ct_key, struct ct_value, conntrack, SVCXDP_CT_SIZE);
/* The same for flows that have not yet sent a second packet (conntrack.h, ct_confirm):
 * a flood of spoofed one-packet flows evicts only its own kind here. One table per
 * kind of entry point (svcxdp.h, SVCXDP_CT_UNCONFIRMED_SHARE): ct_unconfirmed for the
 * external one (NodePort, LB and external IPs, their SNAT reply entries included),
 * ct_unconfirmed_pod for the pod-facing one. Arrays of 8-way sets, not LRU hashes
 * (conntrack.h, "the unconfirmed tables"). */
SVCXDP_MAP("array", __u32, struct ct_set, ct_unconfirmed,
	   SVCXDP_CT_UNCONFIRMED_SIZE / SVCXDP_CT_SET_WAYS);
SVCXDP_MAP("array", __u32, struct ct_set, ct_unconfirmed_pod,
	   SVCXDP_CT_UNCONFIRMED_POD_SIZE / SVCXDP_CT_SET_WAYS);
/* The secret seed of the unconfirmed tables' set hash, written by the loader when it
 * creates the map (random, never 0): spoofed tuples cannot be aimed at one set. */
SVCXDP_MAP("array", __u32, __u32, ct_set_seed, 1);
/* When a UDP flow hashing to each slot was last written or refreshed in conntrack, in
 * epochs of at least a UDP timeout: lets a UDP first packet skip conntrack (conntrack.h, ct_udp_absent). */
SVCXDP_MAP("array", __u32, struct ct_udp_recent, ct_udp_recent, 1);
/* How the first fragment of a datagram was translated, for the later ones. */
SVCXDP_MAP("lru_hash", struct frag_key, struct frag_value, fragments, SVCXDP_FRAG_SIZE);
/* Round-robin cursor per service id (atomic add, exact order across CPUs). */
SVCXDP_MAP("array", __u32, struct rr_state, rr_state, SVCXDP_SVC_ID_SLOTS);
/* Active connections per backend id, for lc/wlc/sed/nq (see lc.h). An array of
 * plain u32 updated with atomic adds; the writer zeroes an id when it hands it out
 * (through a mapping, as backends'). */
SVCXDP_F_MAP("array", __u32, __u32, backend_conns, SVCXDP_MAX_BACKENDS, BPF_F_MMAPABLE);
/* Maglev: svc_id -> that service's table, an ARRAY[M] of backend ids. Only Maglev
 * services have an entry, so memory grows with them. The writer builds a new inner
 * map and swaps it in with one update (maglev.h). Inner maps are not pinned: the
 * pinned outer map holds them, and user space reaches them by id through it. The
 * template below only gives the inner maps' shape (BPF_F_INNER_MAP: any size). */
BPF_F_TABLE("array", __u32, __u32, maglev_inner, 1, SVCXDP_MAGLEV_INNER_FLAGS);
SVCXDP_MAP("hash_of_maps$maglev_inner", __u32, int, maglev, SVCXDP_MAX_SERVICES);
/* ClientIP affinity: (svc_id, client) -> backend and last use. LRU: a full map
 * reclaims the least recently used entry (counted from user space: inserts
 * minus entries present, see affinity.h). */
SVCXDP_MAP("lru_hash", struct affinity_key, struct affinity_value, affinity, SVCXDP_AFFINITY_SIZE);
/* Socket hooks (sock.h): (socket cookie, backend) -> the service it was asked as.
 * LRU: entries of closed sockets age out (sock_release also removes a connected
 * socket's own). */
SVCXDP_MAP("lru_hash", struct sock_revnat_key, struct sock_revnat_value, sock_revnat,
	   SVCXDP_SOCK_REVNAT_SIZE);
/* Socket hooks' settings (struct sock_config), written by the agent. */
SVCXDP_MAP("array", __u32, struct sock_config, sock_config, 1);
/* loadBalancerSourceRanges: (svc_id, client) longest-prefix match; a hit lets the
 * client in (nodeport.h). LPM tries must not preallocate (BPF_F_NO_PREALLOC = 1). */
SVCXDP_F_MAP("lpm_trie", struct src_range_key, __u8, source_ranges, SVCXDP_SOURCE_RANGES_SIZE, 1);
/* The external entry point's tail programs, set by the loader: svcxdp_np_out (nodeport.h)
 * and svcxdp_ext_reply (svcxdp.c). Pinned, so a program still attached after its agent
 * stopped keeps them. */
#define SVCXDP_TAIL_NP_OUT 0
#define SVCXDP_TAIL_EXT_REPLY 1
SVCXDP_MAP("prog", __u32, __u32, np_tail, 2);
/* ifindex -> that device, for every device the agent made a redirect target (fib.h):
 * a veth only takes redirected frames when its peer runs an XDP program (or has GRO
 * on), else the kernel drops them, so only devices the agent prepared are listed and
 * a frame for any other goes through the stack. bcc's BPF_DEVMAP cannot be pinned:
 * the same table shape (redirect_map only) in a section of its own. */
struct tx_ports_table_t {
	__u32 key;
	__u32 leaf;
	__u64 (*redirect_map)(int, int);
	__u32 max_entries;
};
#ifdef SVCXDP_PIN_DIR
__attribute__((section("maps/devmap:" SVCXDP_PIN_DIR "/tx_ports")))
#else
__attribute__((section("maps/devmap")))
#endif
struct tx_ports_table_t tx_ports = { .max_entries = SVCXDP_TX_PORTS_SIZE };
/* ifindex -> the MAC address of the external interface (as otherhost.h reads it from a
 * frame: three u16s; 0: not known, no check), written by the agent before it attaches
 * there. Same bound as tx_ports. */
SVCXDP_MAP("array", __u32, __u64, ext_macs, SVCXDP_TX_PORTS_SIZE);
/* Nonzero while the writer may be replacing entries of `services`, `rev_nat`, `slots`
 * or `maglev`, and until every packet that looked one up meanwhile has left the program
 * (the writer clears it a grace period after its last replacement: replacing.py). A
 * lookup in one of them that misses while it is set looks again (writer_replacing). */
SVCXDP_MAP("array", __u32, __u32, replacing, 1);

/* Whether a lookup in a map the writer replaces entries of, that missed, should look
 * again. A hash map replaces an element by linking the new one at its bucket's head, then
 * unlinking the old: a lookup already past the head when the new one came, and not yet at
 * the old one when it went, finds neither (about one lookup in 2,000-15,000 of a 16-entry
 * map whose entries are rewritten back to back; one new flow in millions at 400 services).
 * Looking again from the head finds the new element. The writer sets the flag before its
 * first replacement and clears it only a grace period after its last, when every lookup
 * that overlapped one has finished, so a lookup that missed this way reads it set (x86
 * keeps loads in order: this load follows the one that skipped the old element). Misses
 * pay this one array read; hits nothing. */
static __always_inline int writer_replacing(void)
{
	__u32 zero = 0;
	__u32 *flag = replacing.lookup(&zero);
	return flag && *flag;
}
/* Frames handed from the external entry point to tc ingress (handoff.h): what the frame
 * keeps through GRO -> where tc sends it, and how many such frames are on their way.
 * Never pinned: a note lives microseconds, and both programs that use it belong to
 * one build (the entry point reaches handoff_pass through np_tail, which a new build
 * fills at load). LRU: notes tc took (count 0) or never saw make room for new ones. */
BPF_TABLE("lru_hash", struct svcxdp_handoff_key, struct svcxdp_handoff, handoff_notes, SVCXDP_HANDOFF_NOTES);
/* When the last note was written (bpf_ktime_get_coarse_ns; 0: never): tc looks a frame
 * up in handoff_notes only within SVCXDP_HANDOFF_WINDOW_NS of it, so the frames of a node
 * whose neighbours are resolved (all of them, nearly always) pay one array read. */
BPF_ARRAY(handoff_last, __u64, 1);
/* The FIB result cache's generation (struct fib_gen), written by the agent. */
SVCXDP_MAP("array", __u32, struct fib_gen, fib_gen, 1);
/* The cache itself (fib.h); per CPU, never pinned: it is only a cache, and a slot of
 * another program's or generation's is never used. */
BPF_PERCPU_ARRAY(fib_cache, struct fib_cache_entry, 1 << SVCXDP_FIB_CACHE_BITS);
/* Per-service packets, bytes, new flows, rejects. */
SVCXDP_MAP("percpu_array", __u32, struct svc_stats, svc_stats, SVCXDP_SVC_ID_SLOTS);
/* Per-backend new flows: a row of SVCXDP_MAX_BACKENDS counters per CPU (8 bytes x
 * backends x CPUs), each CPU adding to its own row only (lb.h lb_count_new). Not a
 * per-CPU array, whose values a reader can only copy out through the kernel (~50 ms for
 * 110,000 ids on two CPUs): this one is mapped into user space (mapped.py CpuRows),
 * where a scrape sums the rows in about a millisecond. */
SVCXDP_F_MAP("array", __u32, struct backend_stats, backend_stats, SVCXDP_MAX_BACKENDS * SVCXDP_NR_CPUS,
	     BPF_F_MMAPABLE);
/* Each CPU's budget of reject answers (reject.h reject_allowed); never pinned: a new
 * program starting with a full budget answers at most one burst more. */
BPF_PERCPU_ARRAY(reject_budget, struct reject_budget, 1);
/* Scratch of the least-connections scan; per CPU, never pinned (no state). */
BPF_PERCPU_ARRAY(lc_scratch, struct lc_best, 1);
/* The packet's copy of its service entry (svcxdp.c svc_read); per CPU, never pinned.
 * In map memory, not on the stack: the verifier tracks values spilled to the stack,
 * and tracking count and algorithm multiplied the paths past its budget. */
BPF_PERCPU_ARRAY(svc_scratch, struct svc_value, 1);
/* An external flow's packet on its way to a tail program (nodeport.h). Pinned, though it
 * holds nothing past a packet: a new build's tail programs go into the pinned np_tail while
 * the entry point of the build before it still runs on the external interface (until the
 * agent attaches the new one), and that entry point's packets must reach them through the
 * same map. (A struct np_pending of another layout is another layout's dataplane: replaced
 * whole, np_tail with it.) */
SVCXDP_MAP("percpu_array", __u32, struct np_pending, np_scratch, 1);
/* Datapath-wide counters, SVCXDP_CNT_*. */
SVCXDP_MAP("percpu_array", __u32, __u64, counters, SVCXDP_CNT_MAX);

/* Handlers record what happened in an events word; the entry point bumps the
 * counters once per packet. (Counting at every branch made clang keep the helper
 * address in a register and emit indirect calls, which the verifier rejects.) */
struct events {
	__u32 main;   /* SVCXDP_CNT_* of the path taken */
	__u32 extra;  /* a second, rarer event, or SVCXDP_CNT_MAX */
};

/* What a handler of the external entry point returns for a frame that the
 * svcxdp_np_out tail program sends on (nodeport.h); not an XDP verdict. */
#define SVCXDP_VERDICT_NP_OUT 0x100
/* ... and for one that is not for a frontend, which its tail svcxdp_ext_reply takes. */
#define SVCXDP_VERDICT_EXT_REPLY 0x101

static __always_inline void counters_bump(__u32 idx)
{
	__u64 *v = counters.lookup(&idx);
	if (v)
		*v += 1;
}

#endif /* SVCXDP_MAPS_H */
