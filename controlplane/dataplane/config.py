"""How a dataplane instance is built: map sizes, timeouts, forwarding mode, pins."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .layout import const

PIN_ROOT = Path("/sys/fs/bpf/svcxdp")
_INSTANCE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def remove_pin_root_if_empty() -> None:
    """PIN_ROOT goes if nothing is pinned under it: for a run (a test session, a bench, the
    soak) that found no root, made one and reset its instances. An instance left behind
    keeps it, visible."""
    try:
        PIN_ROOT.rmdir()
    except OSError:
        pass


# The XDP entry points' pins inside an instance's pin folder (the agent pins them): pod
# interfaces run svcxdp_main, the node's external interfaces svcxdp_external; the idle-flow
# GC (svcxdp_ct_gc, bpf/ctgc.h) is attached nowhere, the agent runs it with test-run; the
# tc programs: svcxdp_local_reply on every served device's egress, svcxdp_handoff on the
# external interfaces' ingress (attach.py).
PROGRAM_PINS = {"pod": "prog", "external": "prog_external", "ct_gc": "prog_ct_gc",
                "local_reply": "prog_local_reply", "handoff": "prog_handoff"}
# The build stamp's pin beside them (build.py): which build the pins hold.
STAMP_PIN = "build_stamp"
# The flow tables (bpf/maps.h, conntrack.h): conntrack (confirmed flows), then the
# unconfirmed ones — flows from outside the cluster, flows from pods.
FLOW_TABLES = ("conntrack", "ct_unconfirmed", "ct_unconfirmed_pod")
UNCONFIRMED_TABLES = FLOW_TABLES[1:]


class ConfigError(ValueError):
    pass


def set_table_size_problem(entries: int) -> str | None:
    """Why `entries` cannot size an unconfirmed table (sets addressed by a masked hash),
    or None if it can."""
    ways = const("CT_SET_WAYS")
    if entries < ways or entries & (entries - 1):
        return f"must be a power of two of at least {ways} (a table of {ways}-way sets, bpf/conntrack.h)"
    return None


def _power_of_two_at_most(n: int) -> int:
    """The largest power of two <= n, and at least one set's ways (an unconfirmed table
    is sets addressed by a masked hash)."""
    return max(1 << (max(n, 1).bit_length() - 1), const("CT_SET_WAYS"))


def svc_id_slots(max_services: int) -> int:
    """Entries of the maps indexed by service id (bpf/maps.h SVCXDP_SVC_ID_SLOTS):
    ids run 1..max_services, 0 means none."""
    return max_services + 1


def node_instance(lab_prefix: str, node: str) -> str:
    """The dataplane instance of a lab node: pins are per lab and node, so a test lab
    never touches the user's lab."""
    return f"{lab_prefix}-{node}"


MAX_REJECT_RATE = const("MAX_REJECT_RATE")     # a second (bpf/reject.h: a token is whole nanoseconds)
MAX_REJECT_BURST = const("MAX_REJECT_BURST")


@dataclass(frozen=True)
class DataplaneConfig:
    """Compile-time settings of one dataplane instance (one node)."""

    instance: str = "default"
    max_services: int = const("DEFAULT_MAX_SERVICES")
    max_backends: int = const("DEFAULT_MAX_BACKENDS")
    max_slots: int = const("DEFAULT_MAX_SLOTS")
    ct_size: int = const("DEFAULT_CT_SIZE")
    # Entries of the tables of flows that sent one packet so far (bpf/conntrack.h): from
    # outside (ct_unconfirmed; None: a share of ct_size) and from pods (ct_unconfirmed_pod;
    # None: SVCXDP_DEFAULT_CT_UNCONFIRMED_POD, at most the former).
    ct_unconfirmed: int | None = None
    ct_unconfirmed_pod: int | None = None
    frag_size: int = const("DEFAULT_FRAG_SIZE")
    affinity_size: int = const("DEFAULT_AFFINITY_SIZE")  # ClientIP entries (docs/affinity.md)
    source_ranges_size: int = const("DEFAULT_SOURCE_RANGES")  # loadBalancerSourceRanges CIDRs, all frontends
    sock_revnat_size: int = const("DEFAULT_SOCK_REVNAT_SIZE")  # (socket, backend) pairs, bpf/sock.h
    tcp_timeout_s: int = const("DEFAULT_TCP_TIMEOUT_S")
    tcp_close_timeout_s: int = const("DEFAULT_TCP_CLOSE_TIMEOUT_S")
    tcp_half_close_timeout_s: int = const("DEFAULT_TCP_HALF_CLOSE_TIMEOUT_S")
    udp_timeout_s: int = const("DEFAULT_UDP_TIMEOUT_S")
    # The rejects the program answers itself (TCP RST, ICMP port unreachable: bpf/reject.h),
    # per CPU: a token bucket of this rate a second and this burst (the kernel's defaults
    # for its ICMP errors, which it counts per node).
    reject_rate: int = const("DEFAULT_REJECT_RATE")
    reject_burst: int = const("DEFAULT_REJECT_BURST")
    # Translated frames go to their egress device with a FIB lookup + redirect (fib.h)
    # where the device is a redirect target; False: every one through the node's stack.
    fib_redirect: bool = True
    pin: bool = True
    # Pinned maps that another build laid out or sized differently (an upgrade that changed
    # a map, a changed size flag): True replaces the whole dataplane with new maps, its
    # tracked flows forgotten (program.py, load; the agent's default); False refuses to load.
    replace_stale: bool = False
    pin_root: Path = PIN_ROOT

    def __post_init__(self) -> None:
        if not _INSTANCE.match(self.instance):
            raise ConfigError(f"instance {self.instance!r}: must be 1-40 lower-case letters, digits or '-'")
        for name in ("max_services", "max_backends", "max_slots", "ct_size", "ct_unconfirmed",
                     "ct_unconfirmed_pod", "frag_size", "affinity_size", "source_ranges_size",
                     "sock_revnat_size", "tcp_timeout_s", "tcp_close_timeout_s", "tcp_half_close_timeout_s",
                     "udp_timeout_s", "reject_rate", "reject_burst"):
            value = getattr(self, name)
            if value is None and name in ("ct_unconfirmed", "ct_unconfirmed_pod"):   # (their defaults)
                continue
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        for name, most in (("reject_rate", MAX_REJECT_RATE), ("reject_burst", MAX_REJECT_BURST)):
            if getattr(self, name) > most:
                raise ConfigError(f"{name}: at most {most:,}, got {getattr(self, name)}")
        for name in ("ct_unconfirmed", "ct_unconfirmed_pod"):
            value = getattr(self, name)
            problem = None if value is None else set_table_size_problem(value)
            if problem:
                raise ConfigError(f"{name}: {problem}, got {value}")
        from .pinned import cpu_id_limit
        cpus = cpu_id_limit()
        if self.max_backends * cpus >= 1 << 31:   # backend_stats: a row per CPU (bpf/maps.h)
            raise ConfigError(f"max_backends: with {cpus} possible CPUs, the per-backend counters "
                              f"(a row of max_backends per CPU) would pass 2^31 entries; got {self.max_backends}")

    @property
    def svc_id_slots(self) -> int:
        return svc_id_slots(self.max_services)

    @property
    def ct_unconfirmed_size(self) -> int:
        """Entries of ct_unconfirmed, where flows from outside the cluster (the external
        entry point) wait until their second packet (bpf/conntrack.h): `ct_unconfirmed` if
        set, else a fixed share of the conntrack size, rounded down to a power of two (the
        table is sets addressed by a masked hash). Every first packet inserts there, and
        under a flood of spoofed first packets a handshake's entry lives until 7 later
        ones land in its set, which must outlast the client's round trip (the flood law,
        datapath-notes.md §16, §20)."""
        if self.ct_unconfirmed is not None:
            return self.ct_unconfirmed
        return _power_of_two_at_most(self.ct_size // const("CT_UNCONFIRMED_SHARE"))

    @property
    def ct_unconfirmed_pod_size(self) -> int:
        """Entries of ct_unconfirmed_pod, the same for flows from pods (the pod-facing
        entry point): `ct_unconfirmed_pod` if set, else SVCXDP_DEFAULT_CT_UNCONFIRMED_POD —
        small enough to stay in cache, since a pod's handshake completes within an
        in-cluster round trip (16 ms of entry life at a million spoofed first packets a
        second) — and never more than ct_unconfirmed by default."""
        if self.ct_unconfirmed_pod is not None:
            return self.ct_unconfirmed_pod
        return _power_of_two_at_most(min(const("DEFAULT_CT_UNCONFIRMED_POD"), self.ct_unconfirmed_size))

    def flow_table_sizes(self) -> dict[str, int]:
        """Entries of each of FLOW_TABLES."""
        return dict(zip(FLOW_TABLES, (self.ct_size, self.ct_unconfirmed_size, self.ct_unconfirmed_pod_size)))

    @property
    def pin_dir(self) -> Path:
        return self.pin_root / self.instance

    def cflags(self) -> list[str]:
        from .pinned import cpu_id_limit   # (sysfs; pinned.py's libbpf is not needed here)
        flags = [
            f"-DSVCXDP_NR_CPUS={cpu_id_limit()}",
            f"-DSVCXDP_MAX_SERVICES={self.max_services}",
            f"-DSVCXDP_MAX_BACKENDS={self.max_backends}",
            f"-DSVCXDP_MAX_SLOTS={self.max_slots}",
            f"-DSVCXDP_CT_SIZE={self.ct_size}",
            f"-DSVCXDP_CT_UNCONFIRMED_SIZE={self.ct_unconfirmed_size}",
            f"-DSVCXDP_CT_UNCONFIRMED_POD_SIZE={self.ct_unconfirmed_pod_size}",
            f"-DSVCXDP_FRAG_SIZE={self.frag_size}",
            f"-DSVCXDP_AFFINITY_SIZE={self.affinity_size}",
            f"-DSVCXDP_SOURCE_RANGES_SIZE={self.source_ranges_size}",
            f"-DSVCXDP_SOCK_REVNAT_SIZE={self.sock_revnat_size}",
            f"-DSVCXDP_TCP_TIMEOUT_S={self.tcp_timeout_s}ULL",
            f"-DSVCXDP_TCP_CLOSE_TIMEOUT_S={self.tcp_close_timeout_s}ULL",
            f"-DSVCXDP_TCP_HALF_CLOSE_TIMEOUT_S={self.tcp_half_close_timeout_s}ULL",
            f"-DSVCXDP_UDP_TIMEOUT_S={self.udp_timeout_s}ULL",
            f"-DSVCXDP_REJECT_RATE={self.reject_rate}ULL",
            f"-DSVCXDP_REJECT_BURST={self.reject_burst}ULL",
            "-Wno-unused-function",
        ]
        if not self.fib_redirect:
            flags.append("-DSVCXDP_STACK_FORWARD=1")
        if self.pin:
            flags.append(f'-DSVCXDP_PIN_DIR="{self.pin_dir}"')
        return flags
