"""`svcctl dataplane stats|services` read a node's pinned maps (readout.py over pinned.py)
and never build the program: their numbers must be the loaded program's own, summed
over CPUs, and the process must not import bcc (which would mean compiling with LLVM)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controlplane.dataplane import readout
from controlplane.dataplane.libbpf import lib
from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.pinned import PinnedMaps

from .harness import BACKENDS, CLIENT, CLIENT_MAC, NODE_MAC, VIP, Harness

ROOT = Path(__file__).resolve().parents[2]
VIP2 = "10.96.0.102"
MAPS = ("services", "backends", "counters", "svc_stats", "affinity")
# Run the command in a fresh interpreter and fail if bcc was imported on the way.
NO_BCC = ("import sys; from controlplane.cli import main; rc = main(sys.argv[1:]); "
          "sys.exit(3 if 'bcc' in sys.modules else rc)")


@pytest.fixture
def pinned(xdp: Harness):
    # the harness's reset empties affinity before and after, so the counts read are this test's
    instance = f"pytest-readout-{os.getpid()}"
    pins = Path("/sys/fs/bpf/svcxdp") / instance
    pins.mkdir(parents=True, exist_ok=True)
    try:
        for name in MAPS:
            assert lib().bpf_obj_pin(xdp.dp.table(name).map_fd, str(pins / name).encode()) == 0
        yield instance
    finally:
        for name in MAPS:
            (pins / name).unlink(missing_ok=True)
        pins.rmdir()


def svcctl(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", NO_BCC, *args], cwd=ROOT, text=True, capture_output=True)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    return proc.stdout


def test_stats_are_the_programs_counters_without_building_it(xdp: Harness, pinned: str):
    xdp.writer.upsert(ServiceState(Frontend(VIP, 80, "TCP"), tuple(Backend(ip, 8080) for ip in BACKENDS), "rr", 30))
    xdp.writer.upsert(ServiceState(Frontend(VIP2, 80, "TCP"), (), "random"))   # no endpoints: rejects
    for sport in range(20000, 20005):
        xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=80, flags="S"))
    for sport in range(20000, 20003):
        xdp.send(Ether(src=CLIENT_MAC, dst=NODE_MAC) / IP(src=CLIENT, dst=VIP2) / TCP(sport=sport, dport=80, flags="S"))
    out = svcctl("dataplane", "stats", "--instance", pinned)
    lines = out.splitlines()
    counters = xdp.dp.counters()
    assert sum(counters.values()) > 0
    for name, value in counters.items():
        assert f"{name:<21} {value}" in lines, name
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("10.96.",))}
    for fe in (Frontend(VIP, 80, "TCP"), Frontend(VIP2, 80, "TCP")):
        s = xdp.dp.service_stats(xdp.writer.svc_id(fe))
        assert rows[str(fe).split()[0]] == [str(s[f]) for f in ("packets", "bytes", "new_flows", "rejects")]
    assert rows[str(Frontend(VIP, 80, "TCP")).split()[0]][2] == "5"      # five new flows
    assert rows[str(Frontend(VIP2, 80, "TCP")).split()[0]][3] == "3"     # three rejects
    aff = [line for line in lines if line.startswith("AFFINITY ENTRIES")]
    assert aff and aff[0].split()[2] == "1"                                  # one client, one entry


def test_services_lists_what_the_writer_installed(xdp: Harness, pinned: str):
    xdp.writer.upsert(ServiceState(Frontend(VIP, 80, "TCP"),
                                   tuple(Backend(ip, 8080, "terminating" if i == 0 else "active")
                                         for i, ip in enumerate(BACKENDS)), "maglev", 0))
    out = svcctl("dataplane", "services", "--instance", pinned)
    row = [line for line in out.splitlines() if line.startswith(VIP)]
    assert len(row) == 1
    assert row[0].split()[1:3] == ["maglev", "None"]
    listed = row[0].split()[3].split(",")
    assert sorted(listed) == sorted([f"{BACKENDS[0]}:8080(terminating)", *(f"{ip}:8080" for ip in BACKENDS[1:])])


def test_a_reader_refuses_an_id_the_maps_cannot_hold(xdp: Harness, pinned: str):
    """Read-only adopters claim ids in allocators limited by the maps' own sizes, as the
    writer's are: a service id past max_services is an error naming the map."""
    xdp.writer.upsert(ServiceState(Frontend(VIP, 80, "TCP"), tuple(Backend(ip, 8080) for ip in BACKENDS), "random"))
    maps = PinnedMaps(Path("/sys/fs/bpf/svcxdp") / pinned)
    try:
        assert {fe.vip for fe in readout.installed(maps)} == {VIP}
        table = xdp.dp.table("services")
        (key, value), = table.items()
        good = int(value.svc_id)
        value.svc_id = xdp.dp.config.svc_id_slots       # one past the last id the arrays hold
        table[key] = value
        try:
            with pytest.raises(ValueError, match=r"services map \(max_services=\d+\): id \d+ outside"):
                readout.installed(maps)
        finally:
            value.svc_id = good
            table[key] = value
        assert {fe.vip for fe in readout.installed(maps)} == {VIP}
    finally:
        maps.close()


def test_counters_of_a_program_built_before_a_counter_was_added_read_as_zero(tmp_path):
    """A CLI newer than the node's running program (an upgrade under way) reads the
    pinned counters it finds; one the old program does not count reads 0 (it crashed)."""
    from bcc import BPF

    from controlplane.dataplane.layout import COUNTER_NAMES
    old = max(COUNTER_NAMES)   # (an index a retired counter left unnamed makes no gap here)
    bpf = BPF(text=f"BPF_PERCPU_ARRAY(counters, u64, {old});".encode())
    try:
        table = bpf[b"counters"]
        table[table.Key(0)] = table.Leaf(*([2] * len(table[table.Key(0)])))

        class Maps:
            def table(self, name):
                return bpf[name.encode()]

        got = readout.counters(Maps())
        assert got[COUNTER_NAMES[0]] == 2 * len(table[table.Key(0)])
        assert got[COUNTER_NAMES[old]] == 0 and len(got) == len(COUNTER_NAMES)
    finally:
        bpf.cleanup()
