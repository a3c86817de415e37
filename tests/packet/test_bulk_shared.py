"""A sync of many new frontends that share addresses among themselves — a NodePort
service's ClusterIP and NodePort frontends list the same backends — is planned and
attached in bulk (plan.NewPlans, RevNat.attach_many, which finds the shared addresses
by sorting them). It must leave the maps and the writer's bookkeeping exactly as
upserting the same frontends one at a time does, the reply-entry flags included, and
a writer adopting the result must find nothing to repair."""
from __future__ import annotations

import pytest

from controlplane.dataplane.model import Backend, Frontend, ServiceState
from controlplane.dataplane.writer import MapWriter

from .harness import Harness
from .test_bulk_delete import snapshot

N = 240


def states(kept: int = 0) -> list[ServiceState]:
    """N services' frontends, in the order a sync lists them: every third a NodePort
    service (its ClusterIP frontend, then the NodePort one on the same backends), every
    fifth sharing an address with the service before it, every seventh on UDP (the same
    ip and port over another protocol is another address), every eleventh with no
    backends. `kept`: the first ones, of another batch before."""
    out = []
    for i in range(N):
        proto = "UDP" if i % 7 == 0 else "TCP"
        bs = [Backend(f"10.246.{i // 60}.{1 + (i % 60) * 4 + j}", 8080) for j in range(3)]
        if i % 5 == 1:   # its first backend is the previous service's first
            bs[0] = Backend(f"10.246.{(i - 1) // 60}.{1 + ((i - 1) % 60) * 4}", 8080)
        if i % 11 == 4:
            bs = []
        fes = [Frontend(f"10.96.{90 + i // 200}.{1 + i % 200}", 80, proto)]
        if i % 3 == 0:
            fes.append(Frontend("192.168.50.10", 30000 + i, proto, "external"))
        algo = "maglev" if i % 4 == 2 else "random"
        out += [ServiceState(fe, tuple(sorted(bs, key=lambda b: (b.ip, b.port))), algo, 0,
                             251 if algo == "maglev" else None) for fe in fes]
    return out


def run(xdp: Harness, bulk: bool, before: int = 0) -> dict:
    xdp.writer.sync([])
    w = MapWriter(xdp.dp)
    w.bulk_shared_min = 1   # the batch's sharing found in numpy, as for a big sync
    all_states = states()
    if before:   # some installed already (one at a time): a batch after them
        for s in all_states[:before]:
            w.upsert(s)
    if bulk:
        took_bulk: list[bool] = []
        attach_many = w.revnat.attach_many
        w.revnat.attach_many = lambda *a: took_bulk.append(attach_many(*a)) or took_bulk[-1]
        w.sync(all_states)
        # in bulk (not one frontend at a time), unless some address was in use before
        assert took_bulk == [not before]
    else:
        for s in all_states[before:]:
            w.upsert(s)
    snap = snapshot(xdp, w)
    assert MapWriter(xdp.dp).adoption_drift == 0
    w.sync([])
    return snap


# 8: the frontends of services 0-5; service 6's first address is service 5's, so the
# batch after them shares an address with a frontend installed before
@pytest.mark.parametrize("before", [0, 8])
def test_bulk_sync_shares_addresses_as_one_at_a_time(xdp: Harness, before: int):
    one_by_one = run(xdp, bulk=False, before=before)
    bulk = run(xdp, bulk=True, before=before)
    # writes: one at a time, an address's entry and flags are rewritten as each user comes
    assert bulk.pop("writes") <= one_by_one.pop("writes")
    for what in one_by_one:
        assert bulk[what] == one_by_one[what], what
    assert bulk["shared"] > N // 3   # the NodePort services' addresses, at least
