"""Table sizes from the agent's flags to the build: `--ct-unconfirmed-size` sizes the table
of external clients' one-packet flows apart from `--ct-size` (default a share of it,
CT_UNCONFIRMED_SHARE in bpf/svcxdp.h), `--ct-unconfirmed-pod-size` the pods' one
(default DEFAULT_CT_UNCONFIRMED_POD, at most the former), and both reach the cflags
(the maps themselves: tests/packet/test_flows.py)."""
from __future__ import annotations

import argparse

import pytest

from controlplane.agent import commands
from controlplane.dataplane.config import ConfigError, DataplaneConfig
from controlplane.dataplane.layout import const

SHARE = const("CT_UNCONFIRMED_SHARE")
POD_DEFAULT = const("DEFAULT_CT_UNCONFIRMED_POD")


def _config(*argv: str) -> DataplaneConfig:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["agent", "--node", "node1", *argv])
    return DataplaneConfig(instance="node1", **commands.dataplane_sizes(args))


def test_ct_unconfirmed_is_a_share_of_the_conntrack_unless_given():
    assert _config().ct_unconfirmed_size == DataplaneConfig().ct_size // SHARE
    assert _config("--ct-size", "65536").ct_unconfirmed_size == 65536 // SHARE
    # (its sets are addressed by a masked hash: a power of two, the share rounded down)
    assert _config("--ct-size", "1000").ct_unconfirmed_size == 256
    given = _config("--ct-size", "65536", "--ct-unconfirmed-size", "1024")
    assert (given.ct_size, given.ct_unconfirmed_size) == (65536, 1024)
    assert "-DSVCXDP_CT_UNCONFIRMED_SIZE=1024" in given.cflags()
    assert "-DSVCXDP_CT_SIZE=65536" in given.cflags()
    with pytest.raises(ValueError, match="--ct-unconfirmed-size 1000: must be a power of two"):
        _config("--ct-unconfirmed-size", "1000")


def test_the_pods_table_keeps_its_own_size_unless_the_external_one_is_smaller():
    assert _config().ct_unconfirmed_pod_size == POD_DEFAULT < _config().ct_unconfirmed_size
    assert _config("--ct-size", "4096").ct_unconfirmed_pod_size == 4096 // SHARE < POD_DEFAULT
    assert _config("--ct-unconfirmed-size", "128").ct_unconfirmed_pod_size == 128
    given = _config("--ct-unconfirmed-size", "128", "--ct-unconfirmed-pod-size", "256")
    assert (given.ct_unconfirmed_size, given.ct_unconfirmed_pod_size) == (128, 256)
    assert {"-DSVCXDP_CT_UNCONFIRMED_SIZE=128", "-DSVCXDP_CT_UNCONFIRMED_POD_SIZE=256"} <= set(given.cflags())
    with pytest.raises(ValueError, match="--ct-unconfirmed-pod-size 300: must be a power of two"):
        _config("--ct-unconfirmed-pod-size", "300")


def test_a_size_that_is_not_positive_names_its_flag_or_field():
    with pytest.raises(ValueError, match="--ct-unconfirmed-size -3: must be a positive integer"):
        _config("--ct-unconfirmed-size", "-3")
    with pytest.raises(ConfigError, match="ct_unconfirmed: must be a positive integer"):
        DataplaneConfig(ct_unconfirmed=0)
    with pytest.raises(ValueError, match="--ct-unconfirmed-pod-size 0: must be a positive integer"):
        _config("--ct-unconfirmed-pod-size", "0")
    with pytest.raises(ConfigError, match="ct_unconfirmed_pod: must be a positive integer"):
        DataplaneConfig(ct_unconfirmed_pod=-1)


def test_the_maps_a_clusters_size_fills_are_sized_by_flags():
    """An operator whose cluster outgrows a default (more than 8,192 LoadBalancer source
    ranges, say) sizes that map with a flag, not by editing svcxdp.h."""
    default = _config()
    assert (default.max_services, default.max_backends, default.source_ranges_size) == \
        (const("DEFAULT_MAX_SERVICES"), const("DEFAULT_MAX_BACKENDS"), const("DEFAULT_SOURCE_RANGES"))
    given = _config("--max-services", "100000", "--max-backends", "1000000", "--max-slots", "1200000",
                    "--affinity-size", "524288", "--source-ranges-size", "65536")
    assert (given.max_services, given.max_backends, given.max_slots, given.affinity_size,
            given.source_ranges_size) == (100000, 1000000, 1200000, 524288, 65536)
    assert {"-DSVCXDP_MAX_SERVICES=100000", "-DSVCXDP_MAX_BACKENDS=1000000", "-DSVCXDP_MAX_SLOTS=1200000",
            "-DSVCXDP_AFFINITY_SIZE=524288", "-DSVCXDP_SOURCE_RANGES_SIZE=65536"} <= set(given.cflags())
    with pytest.raises(ValueError, match="--source-ranges-size 0: must be a positive integer"):
        _config("--source-ranges-size", "0")
    with pytest.raises(ValueError, match="--max-backends -1: must be a positive integer"):
        _config("--max-backends", "-1")


def test_the_half_close_timeout_is_a_flag_of_its_own():
    """A half-closed TCP flow (one side's FIN) keeps its own timeout, an hour by default
    (kube-proxy's CLOSE_WAIT): neither the established 6 h nor the closed 10 s."""
    assert _config().tcp_half_close_timeout_s == const("DEFAULT_TCP_HALF_CLOSE_TIMEOUT_S") == 3600
    given = _config("--tcp-half-close-timeout", "120")
    assert given.tcp_half_close_timeout_s == 120 and "-DSVCXDP_TCP_HALF_CLOSE_TIMEOUT_S=120ULL" in given.cflags()
    with pytest.raises(ValueError, match="--tcp-half-close-timeout 0: must be a positive integer"):
        _config("--tcp-half-close-timeout", "0")


def test_the_reject_budget_flags_reach_the_build():
    """--reject-rate / --reject-burst (bpf/reject.h reject_allowed) are compiled in; the
    defaults are the kernel's ICMP limits (per CPU here)."""
    default = _config()
    assert (default.reject_rate, default.reject_burst) == (const("DEFAULT_REJECT_RATE"),
                                                           const("DEFAULT_REJECT_BURST")) == (1000, 50)
    given = _config("--reject-rate", "10", "--reject-burst", "3")
    assert "-DSVCXDP_REJECT_RATE=10ULL" in given.cflags() and "-DSVCXDP_REJECT_BURST=3ULL" in given.cflags()
    with pytest.raises(ValueError, match="--reject-rate 0: must be a positive integer"):
        _config("--reject-rate", "0")
    with pytest.raises(ValueError, match="--reject-rate 2000000000: at most 1,000,000,000"):
        _config("--reject-rate", "2000000000")
    with pytest.raises(ValueError, match="--reject-burst 4294967297: at most 4,294,967,296"):
        _config("--reject-burst", str(2**32 + 1))
    with pytest.raises(ConfigError, match="reject_rate: at most"):
        DataplaneConfig(reject_rate=10**9 + 1)


def test_max_backends_is_refused_where_its_counters_row_per_cpu_would_pass_2_to_the_31(monkeypatch):
    """backend_stats holds a row of max_backends counters per possible CPU (bpf/maps.h),
    indexed by a u32 and sized by a C int: a size that passes 2^31 entries is refused,
    naming the field, before any build."""
    from controlplane.dataplane import pinned
    monkeypatch.setattr(pinned, "cpu_id_limit", lambda: 4096)
    assert "-DSVCXDP_NR_CPUS=4096" in _config("--max-backends", str((1 << 31) // 4096 - 1)).cflags()
    with pytest.raises(ConfigError, match="max_backends.*4096 possible CPUs"):
        _config("--max-backends", str((1 << 31) // 4096))
