"""Flow-table sizes the benches build their dataplanes with.

SVCXDP_BENCH_CT_UNCONFIRMED=N and SVCXDP_BENCH_CT_UNCONFIRMED_POD=N build every bench
dataplane with N entries in ct_unconfirmed (external clients' new flows: bench_nodeport)
or ct_unconfirmed_pod (pods' new flows: bench_stack, bench_datapath) — the agent's
--ct-unconfirmed-size and --ct-unconfirmed-pod-size — instead of the defaults. Each run
records the sizes it used (unconfirmed_sizes) in its results.
"""
from __future__ import annotations

import os

CT_UNCONFIRMED = int(os.environ.get("SVCXDP_BENCH_CT_UNCONFIRMED", "0")) or None
CT_UNCONFIRMED_POD = int(os.environ.get("SVCXDP_BENCH_CT_UNCONFIRMED_POD", "0")) or None


def unconfirmed_config() -> dict[str, int | None]:
    """The DataplaneConfig fields these settings give (None: the default)."""
    return {"ct_unconfirmed": CT_UNCONFIRMED, "ct_unconfirmed_pod": CT_UNCONFIRMED_POD}


def unconfirmed_sizes(dp) -> dict[str, int]:
    """The sizes of a dataplane's unconfirmed tables, for the results' setup."""
    return {"ct_unconfirmed_entries": dp.config.ct_unconfirmed_size,
            "ct_unconfirmed_pod_entries": dp.config.ct_unconfirmed_pod_size}
