"""The lab's etcd cluster as plain data (names, addresses, command lines, URLs), the store
URL a state directory records, and etcd URLs with unix-socket endpoints. No root needed:
the cluster itself is exercised by tests/e2e/test_etcd_lab.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.lab import etcd_cluster, plan
from controlplane.store.etcd_client import parse_endpoints
from controlplane.store.interface import StoreUnavailable
from controlplane.store.paths import STORE_URL_FILE, open_store, recorded_store_url


def members(tmp_path: Path, n: int = 3):
    return [etcd_cluster.member_record("svcxdp-x", i, tmp_path / "etcd") for i in range(1, n + 1)]


def test_members_get_their_own_namespace_and_lan_address(tmp_path: Path) -> None:
    ms = members(tmp_path)
    assert [(m.name, m.netns, m.ip) for m in ms] == [
        ("etcd1", "svcxdp-x-etcd1", "192.168.1.21"), ("etcd2", "svcxdp-x-etcd2", "192.168.1.22"),
        ("etcd3", "svcxdp-x-etcd3", "192.168.1.23")]
    last_member = plan.etcd_ip(plan.MAX_ETCD_MEMBERS)
    assert int(last_member.rsplit(".", 1)[1]) < int(plan.node_ip(1).rsplit(".", 1)[1])   # below the nodes


def test_member_command_line_lists_the_whole_cluster_and_a_unix_listener(tmp_path: Path) -> None:
    ms = members(tmp_path)
    argv = etcd_cluster.member_argv(ms[1], ms, "svcxdp-x")
    joined = " ".join(argv)
    assert "--initial-cluster etcd1=http://192.168.1.21:2380,etcd2=http://192.168.1.22:2380," \
           "etcd3=http://192.168.1.23:2380" in joined
    assert "--listen-client-urls http://192.168.1.22:2379,unix://client.sock:0" in joined
    assert f"--data-dir {tmp_path / 'etcd' / 'etcd2' / 'data'}" in joined


def test_node_processes_get_lan_addresses_the_machine_gets_sockets(tmp_path: Path) -> None:
    ms = members(tmp_path)
    assert etcd_cluster.node_url(ms) == "etcd://192.168.1.21:2379,192.168.1.22:2379,192.168.1.23:2379"
    local = etcd_cluster.local_url(ms)
    assert parse_endpoints(local) == [("unix", str(tmp_path / "etcd" / f"etcd{i}" / "client.sock:0"), 0)
                                      for i in (1, 2, 3)]


def test_a_socket_path_too_long_for_sun_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(etcd_cluster.EtcdClusterError, match="shorter --state-dir"):
        etcd_cluster.member_record("svcxdp-x", 1, tmp_path / ("d" * 120))


def test_unix_endpoints_need_an_absolute_path() -> None:
    with pytest.raises(ValueError, match="absolute socket path"):
        parse_endpoints("etcd://unix:client.sock:0")
    assert parse_endpoints("etcd://10.0.0.1:2379,unix:/run/e.sock:0") == [
        ("http", "10.0.0.1", 2379), ("unix", "/run/e.sock:0", 0)]


def test_a_state_dir_recording_an_etcd_url_opens_etcd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SVCXDP_STORE", raising=False)
    assert recorded_store_url(tmp_path) is None
    (tmp_path / STORE_URL_FILE).write_text("etcd://unix:/nonexistent/client.sock:0\n")
    assert recorded_store_url(tmp_path) == "etcd://unix:/nonexistent/client.sock:0"
    store = open_store(tmp_path)
    assert type(store).__name__ == "EtcdStore"
    store.client.retry_for = 0.2
    with pytest.raises(StoreUnavailable):
        store.current_resource_version()
    assert not (tmp_path / "store.db").exists()
