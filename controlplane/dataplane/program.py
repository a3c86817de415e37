"""Compile, load and pin the XDP dataplane with bcc; open its maps.

A Dataplane is one instance of the program and its maps. With pinning on, maps
live at /sys/fs/bpf/svcxdp/<instance>/<map>; loading again (an agent restart)
adopts them as they are, so nothing a running flow depends on is flushed.
"""
from __future__ import annotations

import ctypes as ct
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from . import attach as _attach
from . import fibwatch, flowsets, frames, replacing, udprecent
from .config import FLOW_TABLES, PROGRAM_PINS, STAMP_PIN, DataplaneConfig
from .layout import COUNTER_NAMES, const, header_struct
from .libbpf import (BPF_F_MMAPABLE, BPF_MAP_TYPE_ARRAY, map_info, obj_get, prog_id, u32_delete, u32_update,
                     u64_update)
from .mapped import MappedArray, open_mapped
from .pinned import PinnedMaps, WritableTable, cpu_id_limit

if TYPE_CHECKING:   # bcc is imported only where a program is compiled (load)
    from bcc import BPF

    from .sockhooks import SockHooks
from .source import program_text

ENTRY = "svcxdp_main"              # pod-facing interfaces: ClusterIP frontends
EXTERNAL_ENTRY = "svcxdp_external"  # the node's external interfaces: NodePort, LB IPs, externalIPs
# The external entry point's tail programs, by their np_tail slot (bpf/maps.h).
EXTERNAL_TAILS = {"svcxdp_np_out": 0,      # its way out (XDP_TX / redirect)
                  "svcxdp_ext_reply": 1}   # what is not for a frontend: replies, ICMP errors
CT_GC_ENTRY = "svcxdp_ct_gc"        # idle-flow GC, run with test-run by the agent (ctgc.py)
LOCAL_REPLY_ENTRY = _attach.TC_NAME  # tc egress: the node's answers for a backend at its address
HANDOFF_ENTRY = _attach.TC_INGRESS_NAME  # tc ingress of external interfaces: frames awaiting a neighbour
# Each program by its role (config.PROGRAM_PINS: where it is pinned): the Dataplane field
# that holds its fd.
PROGRAM_FDS = {"pod": "prog_fd", "external": "external_prog_fd", "ct_gc": "ct_gc_prog_fd",
               "local_reply": "local_reply_prog_fd", "handoff": "handoff_prog_fd"}
SVCXDP_CNT_MAX = const("CNT_MAX")
TX_PORTS_SIZE = const("TX_PORTS_SIZE")
log = logging.getLogger("svcxdp.dataplane")
MAP_NAMES = ("services", "slots", "backends", "rev_nat", *FLOW_TABLES, flowsets.SEED_MAP, udprecent.MAP,
             "fragments", "rr_state", "svc_stats", "backend_stats", "counters", "backend_conns", "maglev",
             "affinity", "sock_revnat", "sock_config", "source_ranges", fibwatch.MAP, "np_scratch", replacing.MAP,
             "ext_macs")


class DataplaneError(RuntimeError):
    pass


class StaleDataplane(DataplaneError):
    """Pinned maps of another layout than this build's: an older or newer build whose
    maps differ, or other sizes (--ct-size and the other size flags). `problems`: a line
    per map."""

    def __init__(self, config: DataplaneConfig, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            f"refusing the pinned maps in {config.pin_dir}: another build's layout ({'; '.join(problems)}); "
            f"remove the old dataplane with `svcctl dataplane reset --instance {config.instance}`, "
            f"or let the agent replace it (--stale-dataplane replace, its default)")


# Every map pin of the program's own (bcc reuses a pin of the same name): the maps, the
# tail-call array and the redirect targets. Not the program pins nor the socket hooks' (they
# name the programs a new build swaps out: sockhooks.py), nor the build stamp (build.py's).
PINNED_MAPS = (*MAP_NAMES, "np_tail", "tx_ports")


BPF_FS_MAGIC = 0xCAFE4A11   # statfs(2)'s f_type of a BPF filesystem (linux/magic.h)


def require_bpffs(pin_root: Path) -> None:
    """Pins live on a BPF filesystem only. Without one mounted, the build fails deep in
    bcc or the child with a FileNotFoundError naming a directory, not the cause: so
    DataplaneError first when `pin_root` (or, while it is not made yet, the directory it
    would be made in: /sys/fs/bpf) is not on one."""
    where = Path(pin_root)
    while not where.exists() and where != where.parent:
        where = where.parent
    if _fs_type(where) != BPF_FS_MAGIC:
        raise DataplaneError(f"bpffs is not mounted at {where} (the dataplane pins its maps under {pin_root}): "
                             f"mount it with `mount -t bpf bpf {where}`")


def _fs_type(path: Path) -> int:
    """statfs(2)'s f_type (os.statvfs has none)."""
    libc = ct.CDLL(None, use_errno=True)
    buf = ct.create_string_buffer(512)   # struct statfs (120 bytes on 64-bit); f_type comes first
    if libc.statfs(os.fsencode(path), buf) != 0:
        raise DataplaneError(f"{path}: statfs: {os.strerror(ct.get_errno())}")
    return ct.c_long.from_buffer(buf).value & 0xFFFFFFFF


Aside = list[tuple[Path, Path]]   # (pin, where it was moved), in the order moved
# The suffixes of pins moved aside during a load: a stale statistics map, a stale dataplane.
STATISTICS_ASIDE, STALE_ASIDE = "replaced", "stale"
# Maps that hold no state a packet's handling depends on over time: statistics, which
# no packet reads, and the socket hooks' settings, which the agent writes at each start
# before it attaches the hooks.
STATISTICS = ("counters", "backend_stats", "sock_config")


def _statistics_layout(config: DataplaneConfig, name: str, info) -> bool:
    """Whether a pinned statistics map is this build's layout: the datapath counters
    as many as it counts; the backends' new flows a mapped array of a row per CPU (a
    build before it had a per-CPU array); the hooks' settings of this build's size (a
    build before had no network namespace in them)."""
    if name == "counters":
        return info.max_entries == SVCXDP_CNT_MAX
    if name == "sock_config":
        return info.value_size == ct.sizeof(header_struct("sock_config"))
    return (info.type == BPF_MAP_TYPE_ARRAY and bool(info.flags & BPF_F_MMAPABLE)
            and info.max_entries == config.max_backends * cpu_id_limit())


def _set_aside_stale_statistics(config: DataplaneConfig) -> Aside:
    """Statistics are not state: a pinned `counters` or `backend_stats` map of another
    layout (a build that counts more events, or lays the counts out otherwise) is
    replaced by this build's own — readers see those counts start again, as after a
    reboot — where a map that holds state makes the whole dataplane stale
    (StaleDataplane). So is `sock_config`, which the agent writes again before its hooks
    replace the old ones (those read the old map until then). Its pin is moved aside
    before bcc would reuse it; load() removes it once the build is loaded, or puts it
    back if the build fails. A program still attached counts into it until it is
    replaced."""
    stale = []
    for name in STATISTICS:
        pin = config.pin_dir / name
        if not pin.exists():
            continue
        fd = obj_get(str(pin))
        try:
            if not _statistics_layout(config, name, map_info(fd)):
                stale.append(pin)
        finally:
            os.close(fd)
    return _move_aside(stale, STATISTICS_ASIDE)


def _move_aside(pins: list[Path], suffix: str) -> Aside:
    """Rename each pin to <name>_<suffix> (bpffs takes no dot in a name)."""
    moved: Aside = []
    try:
        for pin in pins:
            aside = pin.with_name(f"{pin.name}_{suffix}")
            aside.unlink(missing_ok=True)
            os.rename(pin, aside)
            moved.append((pin, aside))
    except BaseException:
        _put_back(moved)
        raise
    return moved


def _set_aside_dataplane(config: DataplaneConfig) -> Aside:
    """Every map pin moved to <name>_stale, where it stays until the new dataplane's
    programs have replaced the old ones (Dataplane.finish_replacement): a program array
    is emptied once nothing in user space holds it, and the old external program, still
    attached meanwhile, tail-calls through its np_tail. A name whose aside pin is there
    already (a replacement an earlier agent did not finish) keeps it — the older maps are
    the ones a program may still run over — and the pin of the unfinished one goes."""
    moved: Aside = []
    for pin in map(config.pin_dir.joinpath, PINNED_MAPS):
        if not pin.exists():
            continue
        if pin.with_name(f"{pin.name}_{STALE_ASIDE}").exists():
            pin.unlink()
        else:
            moved += _move_aside([pin], STALE_ASIDE)
    return moved


def _stale_pins(config: DataplaneConfig) -> list[Path]:
    """The pins of a replaced dataplane's maps still set aside (_set_aside_dataplane)."""
    return [p for name in PINNED_MAPS if (p := config.pin_dir / f"{name}_{STALE_ASIDE}").exists()]


def unfinished_replacement(config: DataplaneConfig) -> bool:
    """Maps of a replaced dataplane are still pinned aside: the programs over them may
    still serve some interface (Dataplane.finish_replacement has not run)."""
    return bool(_stale_pins(config))


# Dataplane.replaced when nothing differs but a replacement is unfinished (an agent that
# stopped between the new maps and the new programs' attach): the agent holds its
# interfaces until the first sync all the same.
UNFINISHED = "an earlier replacement not finished: the old maps are still pinned aside"


def _put_back(moved: Aside) -> None:
    """Undo _move_aside (last moved first: a pin moved twice gets its first self back)."""
    for pin, aside in reversed(moved):
        pin.unlink(missing_ok=True)
        os.rename(aside, pin)


def warn_replaced(instance: str, problems: Sequence[str]) -> None:
    if tuple(problems) == (UNFINISHED,):
        log.warning("dataplane %s: %s", instance, UNFINISHED)
        return
    log.warning("dataplane %s: its pinned maps were made by a build of another layout (%s); replaced "
                "by new ones: the first sync writes the services again, and the flows the node tracked "
                "are forgotten (connections it translated are cut)", instance, "; ".join(problems))


def _layout_problems(bpf, config: DataplaneConfig) -> list[str]:
    """What differs between this build's maps and the pinned ones bcc reused: a line per
    map. A map of another layout must not be reused — the verifier would refuse a program
    over it with a message that names neither, or worse, take it."""
    expected_max = {
        "services": config.max_services, "slots": config.max_slots,
        "backends": config.max_backends, "rev_nat": config.max_backends, **config.flow_table_sizes(),
        # the unconfirmed tables are sets
        "ct_unconfirmed": config.ct_unconfirmed_size // flowsets.WAYS,
        "ct_unconfirmed_pod": config.ct_unconfirmed_pod_size // flowsets.WAYS,
        udprecent.MAP: 1, flowsets.SEED_MAP: 1,
        "fragments": config.frag_size, "rr_state": config.svc_id_slots,
        "svc_stats": config.svc_id_slots, "backend_stats": config.max_backends * cpu_id_limit(),
        "backend_conns": config.max_backends,
        "maglev": config.max_services, "affinity": config.affinity_size,
        "source_ranges": config.source_ranges_size,
        "sock_revnat": config.sock_revnat_size, "sock_config": 1, fibwatch.MAP: 1,
        "counters": SVCXDP_CNT_MAX, "np_tail": len(EXTERNAL_TAILS), "np_scratch": 1, replacing.MAP: 1,
        "ext_macs": TX_PORTS_SIZE,
    }
    out = []
    for name in (*MAP_NAMES, "np_tail"):
        table = bpf[name.encode()]
        info = map_info(table.map_fd)
        # (a per-CPU map's Leaf is bcc's array of every CPU's value; sLeaf is one value)
        want = (ct.sizeof(table.Key), ct.sizeof(getattr(table, "sLeaf", table.Leaf)))
        got = (info.key_size, info.value_size)
        problems = []
        if info.type != table.ttype:   # (bcc's table: the type the source declares)
            problems.append(f"map type {info.type} != {table.ttype}")
        if got != want:
            problems.append(f"key/value size {got} != {want}")
        if name in expected_max and info.max_entries != expected_max[name]:
            problems.append(f"max_entries {info.max_entries} != {expected_max[name]}")
        if problems:
            out.append(f"{name}: {', '.join(problems)}")
    return out


@dataclass
class Dataplane:
    config: DataplaneConfig
    bpf: "BPF | None"          # bcc's object; None when opened by its pins (open())
    prog_fd: int
    external_prog_fd: int
    ct_gc_prog_fd: int
    local_reply_prog_fd: int
    handoff_prog_fd: int
    attached: list[tuple[str, str | None, str]] = field(default_factory=list)
    _sock_hooks: "SockHooks | None" = None
    _pinned: PinnedMaps | None = None
    built: bool = True          # open(): False when the pins were current and nothing was compiled
    _mapped: dict[str, MappedArray | None] = field(default_factory=dict)
    _sets: dict[str, "flowsets.FlowSets"] = field(default_factory=dict)
    _replacing: "replacing.ReplacingFlag | None" = None
    # What load() replaced (StaleDataplane.problems), or (UNFINISHED,): the maps are new and
    # the old ones' programs may still serve; () once finish_replacement has run
    replaced: tuple[str, ...] = ()

    @classmethod
    def open(cls, config: DataplaneConfig) -> "Dataplane":
        """The pinned dataplane of `config`, compiled and loaded by a child process
        only if the pins do not hold this very build (build.py); this process never
        imports bcc. The socket hooks need bcc's object: use load() for them."""
        from .build import ensure_built
        require_bpffs(config.pin_root)
        replaced = ensure_built(config, MAP_NAMES)
        pinned = PinnedMaps(config.pin_dir, WritableTable)
        fds: dict[str, int] = {}
        built = replaced is not None
        try:
            for role, field_name in PROGRAM_FDS.items():
                fds[field_name] = obj_get(str(config.pin_dir / PROGRAM_PINS[role]))
            for name in MAP_NAMES:
                pinned.table(name)
            if not replaced and unfinished_replacement(config):   # (a child's build said so already)
                replaced = (UNFINISHED,)
                warn_replaced(config.instance, replaced)
        except BaseException:
            _close_quietly(fds.values())
            pinned.close()
            raise
        return cls(config=config, bpf=None, **fds, _pinned=pinned, built=built, replaced=replaced or ())

    @classmethod
    def load(cls, config: DataplaneConfig | None = None) -> "Dataplane":
        from bcc import BPF
        config = config or DataplaneConfig()
        # A conntrack table that outlives its program holds UDP flows whose stamps this
        # program cannot trust: a filter new beside it (an agent without one pinned
        # conntrack) never saw them, and another --udp-timeout makes other epochs of
        # the same stamps. The filter starts as "maybe" for all of them (udprecent.py):
        # UDP first packets look in conntrack for two to three epochs after a restart.
        adopts_conntrack = config.pin and (config.pin_dir / "conntrack").exists()
        statistics: Aside = []
        stale: Aside = []
        if config.pin:
            require_bpffs(config.pin_root)
            os.makedirs(config.pin_dir, exist_ok=True)
            for name in STATISTICS:   # a killed load's
                config.pin_dir.joinpath(f"{name}_{STATISTICS_ASIDE}").unlink(missing_ok=True)
            statistics = _set_aside_stale_statistics(config)
        try:
            try:
                dp = cls._compile(config, adopts_conntrack)
            except StaleDataplane as differs:
                if not config.replace_stale:
                    raise
                # Another build's maps (an upgrade, a changed size flag): a new dataplane
                # beside them, the way `dataplane reset` would leave it, but without a
                # moment unserved: a program still attached keeps its own maps (they live
                # while it does) until the agent's first sync has filled the new ones and
                # the new programs replace it. Every map goes, not only the ones that
                # differ: the flow tables name service and backend ids the new maps hand
                # out again. The build stamp goes too: it named the old build's maps.
                log.info("dataplane %s: the pinned maps are another build's layout (%s): compiling a new "
                         "dataplane beside them", config.instance, "; ".join(differs.problems))
                config.pin_dir.joinpath(STAMP_PIN).unlink(missing_ok=True)
                stale = _set_aside_dataplane(config)
                dp = cls._compile(config, adopts_conntrack=False)
                dp.replaced = differs.problems
                warn_replaced(config.instance, differs.problems)
        except BaseException:
            _put_back(statistics + stale)   # readers keep the old maps
            raise
        for _, moved in statistics:
            moved.unlink()
        if config.pin and not dp.replaced and unfinished_replacement(config):
            dp.replaced = (UNFINISHED,)
            warn_replaced(config.instance, dp.replaced)
        return dp

    @classmethod
    def _compile(cls, config: DataplaneConfig, adopts_conntrack: bool) -> "Dataplane":
        from bcc import BPF
        try:
            bpf = BPF(text=program_text().encode(), cflags=config.cflags())
        except Exception as exc:  # bcc raises bare Exception on compile/verify errors
            raise DataplaneError(f"building the XDP program failed: {exc}") from exc
        try:
            # Before the program is loaded: the verifier would refuse a program over
            # maps of another layout, with a message that names neither.
            if config.pin and (problems := _layout_problems(bpf, config)):
                raise StaleDataplane(config, problems)
            if config.pin:
                if adopts_conntrack:
                    udprecent.fill_maybe(bpf[udprecent.MAP.encode()], config.udp_timeout_s)
            # A new set table gets its secret seed; an adopted one keeps its own (its
            # entries sit where that seed put them).
            flowsets.write_seed_once(bpf[flowsets.SEED_MAP.encode()])
            try:
                fn = bpf.load_func(ENTRY.encode(), BPF.XDP)
                ext = bpf.load_func(EXTERNAL_ENTRY.encode(), BPF.XDP)
                tails = bpf[b"np_tail"]
                for name, slot in EXTERNAL_TAILS.items():
                    tails[tails.Key(slot)] = tails.Leaf(bpf.load_func(name.encode(), BPF.XDP).fd)
                gc = bpf.load_func(CT_GC_ENTRY.encode(), BPF.XDP)
                local = bpf.load_func(LOCAL_REPLY_ENTRY.encode(), BPF.SCHED_CLS)
                handoff = bpf.load_func(HANDOFF_ENTRY.encode(), BPF.SCHED_CLS)
            except Exception as exc:
                raise DataplaneError(f"building the XDP program failed: {exc}") from exc
        except DataplaneError:
            bpf.cleanup()
            raise
        return cls(config=config, bpf=bpf, prog_fd=fn.fd, external_prog_fd=ext.fd, ct_gc_prog_fd=gc.fd,
                   local_reply_prog_fd=local.fd, handoff_prog_fd=handoff.fd)

    def finish_replacement(self) -> int:
        """Unpin the maps a replacement set aside (load), once this dataplane's programs
        have replaced the old ones wherever those ran: they go with the last program over
        them. The number of pins removed."""
        pins = _stale_pins(self.config)
        for pin in pins:
            pin.unlink()
        self.replaced = ()
        return len(pins)

    # ---- maps -------------------------------------------------------------------
    def table(self, name: str):
        """The map `name` as a table: bcc's, or a pinned one (open()); the unconfirmed
        flows as mappings over their sets (flowsets.py)."""
        if self._pinned is not None:
            return self._pinned.table(name)
        if name in flowsets.TABLES:
            if name not in self._sets:
                self._sets[name] = flowsets.FlowSets.of(self.raw_table, name)
            return self._sets[name]
        return self.raw_table(name)

    def raw_table(self, name: str):
        """The map `name` itself, whatever its layout (its fd, its kernel types)."""
        if self._pinned is not None:
            return self._pinned.raw_table(name)
        return self.bpf[name.encode()]

    def mapped(self, name: str) -> MappedArray | None:
        """The array map `name` mapped into this process (mapped.py), or None if it has
        no mapping (a pin from before BPF_F_MMAPABLE); one per map, unmapped by close()."""
        if name not in self._mapped:
            self._mapped[name] = open_mapped(self.raw_table(name).map_fd)
        return self._mapped[name]

    @property
    def replacing_flag(self) -> "replacing.ReplacingFlag":
        """The flag the writers set while they replace entries the datapath looks up
        (replacing.py): one per dataplane, whichever writer of this process writes."""
        if self._replacing is None:
            self._replacing = replacing.ReplacingFlag(self.raw_table(replacing.MAP).map_fd)
        return self._replacing

    def settle_writes(self) -> None:
        """Wait until the writers' replacement flag is clear (at most a grace period): a
        stopping agent leaves it so, rather than to the next one."""
        if self._replacing is not None:
            self._replacing.wait()

    @property
    def prog_id(self) -> int:
        return prog_id(self.prog_fd)

    def counters(self) -> dict[str, int]:
        table = self.table("counters")
        out = {}
        for idx, name in COUNTER_NAMES.items():
            out[name] = int(table.sum(table.Key(idx)).value)
        return out

    def service_stats(self, svc_id: int) -> dict[str, int]:
        table = self.table("svc_stats")
        per_cpu = table[table.Key(svc_id)]
        fields = ("packets", "bytes", "new_flows", "rejects")
        return {f: sum(getattr(v, f) for v in per_cpu) for f in fields}

    # ---- cgroup socket hooks (bpf/sock.h) ------------------------------------------
    @property
    def sock_hooks(self) -> SockHooks:
        """The socket hooks, loaded from this program object on first use (the XDP
        path alone never pays their verification)."""
        if self._sock_hooks is None:
            if self.bpf is None:
                raise DataplaneError("the socket hooks are loaded from bcc's program object: "
                                     "this dataplane was opened by its pins (Dataplane.open)")
            from .sockhooks import SockHooks
            self._sock_hooks = SockHooks(self.bpf, self.config.pin_dir if self.config.pin else None)
        return self._sock_hooks

    def set_sock_config(self, client_ip: str | None, netns_cookie: int) -> None:
        """The socket hooks' settings (sockhooks.set_config): the node's address and the
        cookie of its network namespace."""
        from .sockhooks import set_config
        set_config(self.table("sock_config"), client_ip, netns_cookie)

    # ---- interfaces ---------------------------------------------------------------
    def attach(self, ifname: str, netns: str | None = None, mode: str = "native",
               external: bool = False) -> int:
        """`external`: the node's external interface, where traffic from outside the
        cluster arrives (the svcxdp_external entry point)."""
        fd = self.external_prog_fd if external else self.prog_fd
        idx = _attach.attach_xdp(fd, ifname, netns, mode)
        if (ifname, netns, mode) not in self.attached:
            self.attached.append((ifname, netns, mode))
        return idx

    # ---- redirect targets (bpf/fib.h) ---------------------------------------------
    def _tx_ports_fd(self) -> int:
        if self._pinned is not None:
            return self._pinned.fd("tx_ports")
        return self.bpf[b"tx_ports"].map_fd

    def allow_redirect(self, ifindex: int, netns: str | None = None) -> bool:
        """Make the device `ifindex` of `netns` (the namespace the program runs in) a
        target of the FIB redirect: only a device that takes redirected frames may be
        (a veth whose peer runs an XDP program). False if its ifindex is beyond the
        map (TX_PORTS_SIZE): its frames keep going through the stack."""
        if not 0 < ifindex < TX_PORTS_SIZE:
            return False
        with _attach.in_netns(netns):
            u32_update(self._tx_ports_fd(), ifindex, ifindex)
        return True

    def own_mac(self, ifindex: int, mac: bytes) -> bool:
        """Tell the external entry point the MAC address of the external interface
        `ifindex` (bpf/otherhost.h): a unicast frame it receives for any other address is
        another host's, flooded by a switch or bridge, and goes to the stack. False if the
        ifindex is beyond the map (TX_PORTS_SIZE): its frames are not checked."""
        if len(mac) != 6:
            raise ValueError(f"a MAC address of {len(mac)} bytes (ifindex {ifindex})")
        if not 0 < ifindex < TX_PORTS_SIZE:
            return False
        u64_update(self.raw_table("ext_macs").map_fd, ifindex, frames.mac_key(mac))
        return True

    def forbid_redirect(self, ifindex: int) -> None:
        """Frames for `ifindex` go through the stack again (a removed device leaves
        the map by itself)."""
        if 0 < ifindex < TX_PORTS_SIZE:
            u32_delete(self._tx_ports_fd(), ifindex)

    def close(self) -> None:
        """Release this process's handles. Attached programs and pinned maps stay."""
        if self._replacing is not None:
            self._replacing.close()
            self._replacing = None
        for m in self._mapped.values():
            if m is not None:
                m.close()
        self._mapped.clear()
        if self._pinned is not None:
            pinned, self._pinned = self._pinned, None
            try:
                pinned.close()
            finally:   # the programs' fds whatever the maps' did, and once only
                _close_quietly(getattr(self, field_name) for field_name in PROGRAM_FDS.values())
                for field_name in PROGRAM_FDS.values():
                    setattr(self, field_name, -1)
            return
        if self.bpf is not None:
            self.bpf.cleanup()


def _close_quietly(fds: Iterable[int]) -> None:
    """Close every fd (a negative one is none), also after one fails: on the way out of a
    failure or a close, another error would only hide the first."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                log.debug("closing fd %d: %s", fd, exc)


def reset(config: DataplaneConfig) -> bool:
    """Remove an instance's pinned maps (the dataplane's state). True if any existed."""
    pin_dir = Path(config.pin_dir)
    if not pin_dir.exists():
        return False
    for entry in pin_dir.iterdir():
        entry.unlink()
    pin_dir.rmdir()
    return True


FLOOR_PROGRAM = "int xdp_floor(struct xdp_md *ctx) { return XDP_PASS; }"


def load_floor_program() -> tuple["BPF", int]:
    """An empty XDP program: the floor every per-packet cost is measured against."""
    from bcc import BPF
    bpf = BPF(text=FLOOR_PROGRAM.encode())
    return bpf, bpf.load_func(b"xdp_floor", BPF.XDP).fd

