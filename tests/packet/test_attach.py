"""Attaching the programs to a device (controlplane/dataplane/attach.py), in a namespace of
the test's own: XDP in one mode takes over a program attached in the other (the kernel
refuses two modes at once), detach finds the mode itself; the tc egress filter lands on a
clsact qdisc's egress, is replaced in place, is refused where an `ingress` qdisc holds the
handle (a filter given there landed on ingress, silently), goes alone on detach, and
leaves another's filter at its place alone; the tc ingress filter (the handoff, bpf/handoff.h)
sits on the same qdisc's ingress beside it, and each hook's detach takes only its own."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from controlplane.dataplane.attach import (AttachError, attach_tc_egress, attach_tc_ingress, attach_xdp,
                                           detach_tc_egress, detach_tc_ingress, detach_xdp, foreign_addresses_on,
                                           interface_mac)
from controlplane.lab import netns

pytestmark = pytest.mark.root


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


def _xdp(ns: str) -> dict:
    return json.loads(_ip(ns, "-j", "-d", "link", "show", "va"))[0].get("xdp") or {}


def _tc(ns: str, *args: str) -> str:
    return subprocess.run(["tc", "-n", ns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def ns():
    name = f"svcxdp-pt-at{os.getpid()}"
    netns.create(name)
    try:
        _ip(name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        _ip(name, "link", "set", "va", "up")
        yield name
    finally:
        netns.delete(name)


def test_xdp_in_the_other_mode_is_taken_over_and_detached_in_its_own(ns, loaded_dataplane):
    fd = loaded_dataplane.prog_fd
    attach_xdp(fd, "va", ns, "native")
    assert _xdp(ns)["mode"] == 1
    attach_xdp(fd, "va", ns, "generic")       # the kernel refused this before the takeover
    assert _xdp(ns)["mode"] == 2 and "prog" in _xdp(ns)
    detach_xdp("va", ns)
    assert _xdp(ns) == {}


def test_the_tc_egress_filter_goes_on_clsact_egress_and_nowhere_else(ns, loaded_dataplane):
    fd = loaded_dataplane.local_reply_prog_fd
    _tc(ns, "qdisc", "add", "dev", "va", "ingress")
    with pytest.raises(AttachError, match="ingress qdisc, not clsact"):
        attach_tc_egress(fd, "va", ns)
    assert "svcxdp_local_reply" not in _tc(ns, "filter", "show", "dev", "va", "ingress")
    _tc(ns, "qdisc", "del", "dev", "va", "ingress")
    _tc(ns, "qdisc", "add", "dev", "va", "clsact")   # someone else's clsact: shared
    attach_tc_egress(fd, "va", ns)
    attach_tc_egress(fd, "va", ns)                    # replaced in place, not doubled
    assert _tc(ns, "filter", "show", "dev", "va", "egress").count("svcxdp_local_reply") == 1
    assert detach_tc_egress("va", ns) and not detach_tc_egress("va", ns)
    assert "svcxdp_local_reply" not in _tc(ns, "filter", "show", "dev", "va", "egress")
    assert "clsact" in _tc(ns, "qdisc", "show", "dev", "va")


def test_the_tc_ingress_filter_sits_beside_the_egress_one_and_each_detach_takes_its_own(ns, loaded_dataplane):
    attach_tc_egress(loaded_dataplane.local_reply_prog_fd, "va", ns)
    attach_tc_ingress(loaded_dataplane.handoff_prog_fd, "va", ns)
    attach_tc_ingress(loaded_dataplane.handoff_prog_fd, "va", ns)   # replaced in place, not doubled
    ingress = _tc(ns, "filter", "show", "dev", "va", "ingress")
    # (a line names it twice: the filter's name and the program's)
    assert sum("svcxdp_handoff" in line for line in ingress.splitlines()) == 1
    assert "svcxdp_local_reply" not in ingress
    assert "svcxdp_handoff" not in _tc(ns, "filter", "show", "dev", "va", "egress")
    assert detach_tc_ingress("va", ns) and not detach_tc_ingress("va", ns)
    assert "svcxdp_handoff" not in _tc(ns, "filter", "show", "dev", "va", "ingress")
    assert "svcxdp_local_reply" in _tc(ns, "filter", "show", "dev", "va", "egress")
    attach_tc_ingress(loaded_dataplane.handoff_prog_fd, "va", ns)
    assert detach_tc_egress("va", ns) and not detach_tc_egress("va", ns)   # the other way round
    assert "svcxdp_handoff" in _tc(ns, "filter", "show", "dev", "va", "ingress")
    assert detach_tc_ingress("va", ns)


def test_the_tc_ingress_filter_takes_an_ingress_qdisc_and_leaves_another_s_filter(ns, loaded_dataplane):
    """An `ingress` qdisc has the ingress hook (only egress needs clsact); a filter another
    tool put at our place on it is neither replaced nor removed."""
    from controlplane.dataplane.attach import TC_HANDLE, TC_INGRESS, TC_PRIO, open_ipr
    fd = loaded_dataplane.handoff_prog_fd
    _tc(ns, "qdisc", "add", "dev", "va", "ingress")
    attach_tc_ingress(fd, "va", ns)
    assert "svcxdp_handoff" in _tc(ns, "filter", "show", "dev", "va", "ingress")
    assert detach_tc_ingress("va", ns)
    with open_ipr(ns) as ipr:
        ipr.tc("add-filter", "bpf", index=ipr.link_lookup(ifname="va")[0], fd=fd, name="someone_else",
               parent=TC_INGRESS, prio=TC_PRIO, handle=TC_HANDLE, direct_action=True, protocol=0x0003)
    with pytest.raises(AttachError, match="someone_else"):
        attach_tc_ingress(fd, "va", ns)
    assert not detach_tc_ingress("va", ns)
    assert "someone_else" in _tc(ns, "filter", "show", "dev", "va", "ingress")


def test_another_s_filter_at_our_place_is_neither_replaced_nor_removed(ns, loaded_dataplane):
    """Our filter is known by its place (priority, handle) and its name: a bpf filter another
    tool put at that place is not ours to replace or delete."""
    from controlplane.dataplane.attach import TC_EGRESS, TC_HANDLE, TC_PRIO, open_ipr
    fd = loaded_dataplane.local_reply_prog_fd
    with open_ipr(ns) as ipr:
        idx = ipr.link_lookup(ifname="va")[0]
        ipr.tc("add", "clsact", index=idx)
        ipr.tc("add-filter", "bpf", index=idx, fd=fd, name="someone_else", parent=TC_EGRESS, prio=TC_PRIO,
               handle=TC_HANDLE, direct_action=True, protocol=0x0003)
    with pytest.raises(AttachError, match="someone_else"):
        attach_tc_egress(fd, "va", ns)
    assert not detach_tc_egress("va", ns)
    shown = _tc(ns, "filter", "show", "dev", "va", "egress")
    assert "someone_else" in shown and "svcxdp_local_reply" not in shown


def test_uninstall_takes_our_tc_filters_off_when_the_pins_are_gone(ns, loaded_dataplane, tmp_path):
    """`agent --uninstall` after the pins went (a `dataplane reset`, a reboot's empty
    bpffs): our tc filters are ours by place and name and still come off; an XDP program
    is left, as nothing says whose it is."""
    from controlplane.agent.attach_sources import Target
    from controlplane.agent.node_interfaces import uninstall
    attach_xdp(loaded_dataplane.prog_fd, "va", ns, "native")
    attach_tc_egress(loaded_dataplane.local_reply_prog_fd, "va", ns)
    attach_tc_ingress(loaded_dataplane.handoff_prog_fd, "va", ns)
    index = json.loads(_ip(ns, "-j", "link", "show", "va"))[0]["ifindex"]
    assert uninstall(tmp_path / "no-pins", [Target(ns, "va", index)]) == ["va"]
    assert "svcxdp" not in _tc(ns, "filter", "show", "dev", "va", "ingress")
    assert "svcxdp" not in _tc(ns, "filter", "show", "dev", "va", "egress")
    assert "prog" in _xdp(ns)
    detach_xdp("va", ns)


def test_an_interface_s_own_mac_address_and_what_else_may_be_addressed_to_it(ns):
    """What the agent tells the external entry point (bpf/otherhost.h): the device's own
    address, read inside its namespace; and why frames for other addresses may be the
    node's all the same — a macvlan stacked on it (keepalived's VRRP virtual MAC), the
    device being a bridge's port, or a bridge whose port has another address — in which
    case the agent turns the check off."""
    _ip(ns, "link", "set", "va", "address", "02:00:00:aa:bb:01")
    assert interface_mac("va", ns) == bytes.fromhex("020000aabb01")
    with pytest.raises(AttachError):
        interface_mac("nothere", ns)
    index = int(_ip(ns, "-o", "link", "show", "va").split(":")[0])
    assert foreign_addresses_on(index, ns) == []
    _ip(ns, "link", "add", "vrrp0", "link", "va", "type", "macvlan", "mode", "bridge")
    _ip(ns, "link", "set", "vrrp0", "address", "00:00:5e:00:01:07")
    assert [why for why in foreign_addresses_on(index, ns) if "vrrp0" in why and "00:00:5e:00:01:07" in why]
    _ip(ns, "link", "del", "vrrp0")
    _ip(ns, "link", "add", "br0", "type", "bridge")
    _ip(ns, "link", "set", "br0", "address", "02:00:00:aa:bb:02")
    _ip(ns, "link", "set", "va", "master", "br0")
    assert [why for why in foreign_addresses_on(index, ns) if "enslaved" in why]
    bridge = int(_ip(ns, "-o", "link", "show", "br0").split(":")[0])   # its port's address is another
    assert [why for why in foreign_addresses_on(bridge, ns) if "va" in why and "02:00:00:aa:bb:01" in why]


def test_the_agent_looks_again_at_an_external_interface_once_a_link_beside_it_changed(ns, loaded_dataplane,
                                                                                     monkeypatch):
    """The agent tells the external entry point the interface's MAC address at its first
    refresh; a macvlan stacked on it later (keepalived's VRRP virtual MAC) turns the check
    off at the next refresh — the namespace's link events say so — not a minute later, and
    its removal turns it on again. A refresh after no change, or after one that concerns
    no external interface (a veth pair made beside it), looks for nothing."""
    from controlplane.agent import interfaces
    from controlplane.agent.attach_sources import Target
    from controlplane.dataplane import frames
    from controlplane.dataplane.libbpf import u64_lookup
    looks = []

    def counted(ifindex, netns=None):
        looks.append(ifindex)
        return foreign_addresses_on(ifindex, netns)
    monkeypatch.setattr(interfaces, "foreign_addresses_on", counted)
    _ip(ns, "link", "set", "va", "address", "02:00:00:aa:bb:01")
    index = json.loads(_ip(ns, "-j", "link", "show", "va"))[0]["ifindex"]

    def noted() -> bytes | None:
        value = u64_lookup(loaded_dataplane.raw_table("ext_macs").map_fd, index)
        return frames.mac_of_key(value) if value else None
    manager = interfaces.InterfaceManager(loaded_dataplane, lambda: [Target(ns, "va", index, role="external")])
    try:
        assert manager.refresh() == 1
        assert noted() == bytes.fromhex("020000aabb01") and len(looks) == 1
        manager.refresh()                         # (the attach itself was a link change)
        before = len(looks)
        manager.refresh()
        assert len(looks) == before               # nothing changed since: no link dump
        _ip(ns, "link", "add", "vx", "type", "veth", "peer", "name", "vy")
        manager.refresh()
        assert len(looks) == before               # a pod's veth concerns no external interface
        _ip(ns, "link", "add", "vrrp0", "link", "va", "type", "macvlan", "mode", "bridge")
        _ip(ns, "link", "set", "vrrp0", "address", "00:00:5e:00:01:07")
        manager.refresh()
        assert noted() is None                    # not checked: vrrp0's frames are the node's
        _ip(ns, "link", "del", "vrrp0")
        manager.refresh()
        assert noted() == bytes.fromhex("020000aabb01")
    finally:
        manager.close()
        loaded_dataplane.own_mac(index, bytes(6))
