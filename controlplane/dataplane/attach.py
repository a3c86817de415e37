"""Attaching XDP programs to interfaces by index, in the root or a lab namespace.

bcc's attach_xdp() resolves names in the caller's namespace only; pyroute2's
IPRoute(netns=...) opens the netlink socket inside the namespace, while the
program fd is resolved in this process, so one process can serve many namespaces.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from contextlib import contextmanager
from typing import Callable, Iterator

from pyroute2 import IPRoute
from pyroute2 import config as _pr2config
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE

MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED: how the programs on a link run, as pyroute2 names the values
# (XDP_ATTACHED_DRV, _SKB, _MULTI: one of each at once; offloaded ones are not ours).
_ATTACHED_MODES = {"xdp": ("native",), "xdpgeneric": ("generic",), "xdpmulti": ("native", "generic")}

# pyroute2 runs namespace work in a helper process and waits 2 s for it by default;
# on a loaded 2-core machine that fails spuriously. Waiting longer costs nothing.
_pr2config.default_communicate_timeout = max(_pr2config.default_communicate_timeout, 30)


class AttachError(RuntimeError):
    pass


_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise AttachError(f"setns({what}): {os.strerror(err)}")


@contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Run the block with this thread in the named network namespace (None: stay).
    A DEVMAP entry names its device by ifindex in the writer's namespace."""
    if not netns:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        except FileNotFoundError:
            raise AttachError(f"network namespace {netns!r} not found") from None
        try:
            _setns(target, netns)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own, "the thread's own namespace")
    finally:
        os.close(own)


def event_socket(netns: str | None, groups: int) -> socket.socket:
    """A netlink route socket of the named namespace (None: the caller's) subscribed to
    the multicast `groups` (RTMGRP_* bits). Raw: its readers look at the messages' types
    or only at their arrival, and pyroute2's own buffering hides messages from select().
    It keeps the namespace alive until closed."""
    with in_netns(netns):
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)   # bursts of events
        s.bind((0, groups))
    except OSError:
        s.close()
        raise
    return s


def drain_events(events: socket.socket, matters: Callable[[bytes], bool]) -> bool:
    """Read every message waiting on an event socket, without blocking: whether any read
    `matters`. Events that overflowed the socket (ENOBUFS) matter: what changed is unknown."""
    seen = False
    while True:
        try:
            data = events.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return seen
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            seen = True
            continue
        seen = seen or matters(data)


NLMSGHDR = struct.Struct("=IHHII")      # length, type, flags, sequence, port
_IFINFOMSG = struct.Struct("=BxHiII")    # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")           # length, type
_RTM_NEWLINK, _RTM_DELLINK = 16, 17
_IFLA_LINK, _IFLA_MASTER, _IFLA_LINK_NETNSID = 5, 10, 37


def links_touch(data: bytes, ifindexes: frozenset[int]) -> bool:
    """Whether the link messages of one read concern one of `ifindexes`: the device
    itself (its address, its master), a device enslaved to it, or one stacked on it (a
    macvlan or VLAN, whose IFLA_LINK names it; a veth's names its peer, in another
    namespace when IFLA_LINK_NETNSID is there). A pod's veth coming and going does not."""
    at = 0
    while at + NLMSGHDR.size + _IFINFOMSG.size <= len(data):
        length, kind = NLMSGHDR.unpack_from(data, at)[:2]
        if length < NLMSGHDR.size:
            break
        if kind in (_RTM_NEWLINK, _RTM_DELLINK):
            if _IFINFOMSG.unpack_from(data, at + NLMSGHDR.size)[2] in ifindexes:
                return True
            attrs: dict[int, int] = {}
            pos, end = at + NLMSGHDR.size + _IFINFOMSG.size, min(at + length, len(data))
            while pos + _RTATTR.size <= end:
                size, kind_ = _RTATTR.unpack_from(data, pos)
                if size < _RTATTR.size:
                    break
                if kind_ in (_IFLA_LINK, _IFLA_MASTER, _IFLA_LINK_NETNSID) and size >= _RTATTR.size + 4:
                    attrs[kind_] = struct.unpack_from("=i", data, pos + _RTATTR.size)[0]
                pos += (size + 3) & ~3
            if attrs.get(_IFLA_MASTER) in ifindexes:
                return True
            if _IFLA_LINK_NETNSID not in attrs and attrs.get(_IFLA_LINK) in ifindexes:
                return True
        at += (length + 3) & ~3
    return False


_SIOCGIFHWADDR = 0x8927


def interface_mac(ifname: str, netns: str | None = None) -> bytes:
    """The link-layer address of ifname in the named namespace (None: the caller's): six
    bytes for an Ethernet device. One ioctl on a socket made inside the namespace, no
    netlink helper process: the agent asks at every interface refresh."""
    with in_netns(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError as exc:
            raise AttachError(f"the MAC address of {ifname!r}: {exc.strerror}") from None
    return answer[18:24]


def foreign_addresses_on(ifindex: int, netns: str | None = None) -> list[str]:
    """Why frames for other MAC addresses than ifindex's own may be meant for this node
    all the same: it is enslaved (a bridge's or bond's port: its master's address, or
    frames the master's other ports take in, pass through it; or a VRF's), it is a
    master whose ports have addresses of their own (a bond in balance-alb mode, a
    bridge), or a device stacked on it has an address of its own (a macvlan:
    keepalived's VRRP virtual MAC); one line each, none when it has only its own. One
    link dump, made inside the namespace (no helper process)."""
    with in_netns(netns), IPRoute() as ipr:
        links = ipr.get_links()
    own = next((link for link in links if link["index"] == ifindex), None)
    if own is None:
        return []
    why = []
    if own.get_attr("IFLA_MASTER"):
        why.append(f"it is enslaved to ifindex {own.get_attr('IFLA_MASTER')}")
    address = own.get_attr("IFLA_ADDRESS")
    for link in links:
        other = link.get_attr("IFLA_ADDRESS")
        if link["index"] == ifindex or other in (None, address):
            continue
        if link.get_attr("IFLA_MASTER") == ifindex:
            why.append(f"its port {link.get_attr('IFLA_IFNAME')} has the address {other}")
        elif (link.get_attr("IFLA_LINK") == ifindex and link.get_attr("IFLA_LINK_NETNSID") is None
              and _kind(link) in _STACKED):
            why.append(f"{link.get_attr('IFLA_IFNAME')} is stacked on it with the address {other}")
    return why


_STACKED = ("macvlan", "macvtap", "vlan")   # (a veth's IFLA_LINK names its peer: not stacked)


def _kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def open_ipr(netns: str | None) -> IPRoute:
    """A netlink route socket opened inside the named namespace (None: the caller's);
    a context manager that closes it."""
    return IPRoute(netns=netns, flags=0) if netns else IPRoute()


def _index(ipr: IPRoute, ifname: str, netns: str | None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        where = f"network namespace {netns}" if netns else "the root namespace"
        raise AttachError(f"interface {ifname!r} not found in {where}")
    return found[0]


def attach_xdp(prog_fd: int, ifname: str, netns: str | None = None, mode: str = "native") -> int:
    """Attach (or atomically replace) the XDP program on ifname; returns the ifindex. A
    program attached in the other mode is detached first (the kernel runs one mode at a
    time and refuses the attach otherwise): an agent whose mode for the interface
    changed takes it over, with a moment of no program between the two."""
    if mode not in MODES:
        raise AttachError(f"XDP mode {mode!r}: expected one of {', '.join(MODES)}")
    with open_ipr(netns) as ipr:
        idx = _index(ipr, ifname, netns)
        for other in _attached_modes(ipr, idx):
            if other != mode:
                _set_xdp(ipr, idx, -1, other)
        _set_xdp(ipr, idx, prog_fd, mode)
        return idx


def detach_xdp(ifname: str, netns: str | None = None) -> None:
    """Detach the XDP programs from ifname, in whichever mode they run."""
    with open_ipr(netns) as ipr:
        idx = _index(ipr, ifname, netns)
        for mode in _attached_modes(ipr, idx):
            _set_xdp(ipr, idx, -1, mode)


def _set_xdp(ipr: IPRoute, idx: int, prog_fd: int, mode: str) -> None:
    try:
        ipr.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", MODES[mode])]})
    except NetlinkError as exc:   # not an OSError in pyroute2: callers catch AttachError
        raise AttachError(f"XDP on ifindex {idx} ({mode}): {exc}") from None


def _attached_modes(ipr: IPRoute, idx: int) -> tuple[str, ...]:
    """The modes of the programs attached to link idx (native, generic)."""
    xdp = ipr.get_links(idx)[0].get_attr("IFLA_XDP")
    return _ATTACHED_MODES.get(xdp.get_attr("IFLA_XDP_ATTACHED"), ()) if xdp else ()


# Our tc programs: a bpf filter of ours on a hook of the device's clsact qdisc, known by
# its priority and handle and told from another's at that place by its name
# (TCA_BPF_NAME, the program's entry point); direct action, every protocol.
#   egress (bpf/local_reply.h): the node's own answers for a backend at its address;
#   ingress (bpf/handoff.h): frames the external entry point could not send itself.
TC_EGRESS = 0xFFFFFFF3   # the clsact qdisc's egress hook, ffff:fff3
TC_INGRESS = 0xFFFFFFF2  # its ingress hook, ffff:fff2
TC_PRIO = 0xC5
TC_HANDLE = 1
TC_NAME = "svcxdp_local_reply"        # egress
TC_INGRESS_NAME = "svcxdp_handoff"    # ingress
_ETH_P_ALL = 0x0003
_TC_HOOKS = {TC_EGRESS: ("egress", TC_NAME, "no egress hook for the node's own answers (bpf/local_reply.h)"),
             TC_INGRESS: ("ingress", TC_INGRESS_NAME,
                          "no ingress hook for frames awaiting a neighbour (bpf/handoff.h)")}


def _filter_at_ours(ipr: IPRoute, idx: int, hook: int) -> str | None:
    """The name of the bpf filter at our priority and handle on link idx's `hook` ("" if it
    has none), or None if there is none."""
    for f in ipr.get_filters(index=idx, parent=hook):
        if f["info"] >> 16 == TC_PRIO and f["handle"] == TC_HANDLE and not f.get_attr("TCA_CHAIN"):
            options = f.get_attr("TCA_OPTIONS")
            return (options.get_attr("TCA_BPF_NAME") if options else None) or ""
    return None


def _attach_tc(hook: int, prog_fd: int, ifname: str, netns: str | None) -> None:
    """Attach (or replace in place) our filter on ifname's `hook`, adding the clsact qdisc
    if the device has none. For egress, AttachError when the device has an `ingress`
    qdisc instead, which holds the same handle (ffff:) and has no egress hook: a filter
    given there would silently land on ingress (for ingress, that is where it belongs)."""
    where, name, without = _TC_HOOKS[hook]
    with open_ipr(netns) as ipr:
        idx = _index(ipr, ifname, netns)
        try:
            ipr.tc("add", "clsact", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise AttachError(f"clsact qdisc on {ifname}: {exc}") from None
            kinds = {q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=idx) if q["handle"] == 0xFFFF0000}
            if kinds != {"clsact"} and not (hook == TC_INGRESS and kinds == {"ingress"}):
                raise AttachError(f"{ifname} has an {'/'.join(sorted(map(str, kinds)))} qdisc, not clsact: "
                                  f"{without}") from None
        other = _filter_at_ours(ipr, idx, hook)
        if other not in (None, name):
            raise AttachError(f"{ifname}: a filter of another's ({other or 'unnamed'}) holds tc {where} priority "
                              f"{TC_PRIO:#x} handle {TC_HANDLE}: left in place; {without}")
        try:
            ipr.tc("replace-filter", "bpf", index=idx, fd=prog_fd, name=name, parent=hook,
                   prio=TC_PRIO, handle=TC_HANDLE, direct_action=True, protocol=_ETH_P_ALL)
        except NetlinkError as exc:
            raise AttachError(f"tc {where} filter on {ifname}: {exc}") from None


def _detach_tc(hook: int, ifname: str, netns: str | None) -> bool:
    """Remove our filter from ifname's `hook` (the clsact qdisc stays: other filters may
    hang on it); False if there was none (another's at our place is left alone)."""
    name = _TC_HOOKS[hook][1]
    with open_ipr(netns) as ipr:
        idx = _index(ipr, ifname, netns)
        try:
            if _filter_at_ours(ipr, idx, hook) != name:
                return False
            ipr.tc("del-filter", "bpf", index=idx, parent=hook, prio=TC_PRIO, handle=TC_HANDLE,
                   protocol=_ETH_P_ALL)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EINVAL):
                return False
            raise
        return True


def attach_tc_egress(prog_fd: int, ifname: str, netns: str | None = None) -> None:
    """The local-reply program (bpf/local_reply.h) on ifname's egress."""
    _attach_tc(TC_EGRESS, prog_fd, ifname, netns)


def detach_tc_egress(ifname: str, netns: str | None = None) -> bool:
    return _detach_tc(TC_EGRESS, ifname, netns)


def attach_tc_ingress(prog_fd: int, ifname: str, netns: str | None = None) -> None:
    """The handoff program (bpf/handoff.h) on ifname's ingress."""
    _attach_tc(TC_INGRESS, prog_fd, ifname, netns)


def detach_tc_ingress(ifname: str, netns: str | None = None) -> bool:
    return _detach_tc(TC_INGRESS, ifname, netns)


def attached_prog_id(ifname: str, netns: str | None = None) -> int | None:
    """The id of the XDP program attached to ifname, or None."""
    with open_ipr(netns) as ipr:
        idx = _index(ipr, ifname, netns)
        link = ipr.get_links(idx)[0]
        xdp = link.get_attr("IFLA_XDP")
        if not xdp:
            return None
        prog = xdp.get_attr("IFLA_XDP_PROG_ID") or xdp.get_attr("IFLA_XDP_DRV_PROG_ID") \
            or xdp.get_attr("IFLA_XDP_SKB_PROG_ID")
        return prog or None
