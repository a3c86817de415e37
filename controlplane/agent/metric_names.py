"""What the ids in the dataplane's maps stand for, as metric labels: each service id's
frontend and service, each backend id's address, with their exposition text made once per
change, not per scrape (agent/metrics.py writes the samples, samples.py fills in their
values). The metric family names live here too, so the lines and the collector agree on
them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from controlplane.dataplane import readout
from controlplane.dataplane.model import Frontend

from .samples import SampleLines

DATAPATH = ("svcxdp_datapath_packets", "Packets by datapath outcome (SVCXDP_CNT_*)")
_SERVICE_HELP = {"rejects": "Service frontend frames refused for want of endpoints (answered or, over the "
                             "reject budget, dropped: svcxdp_datapath_packets reject / reject_limited)"}
SERVICE_FAMILIES = tuple((f"svcxdp_service_{f}", _SERVICE_HELP.get(f, f"Service frontend {f.replace('_', ' ')}"))
                         for f in readout.STAT_FIELDS)
BACKEND_FAMILY = ("svcxdp_backend_new_flows", "New flows sent to a backend (backends that had one)")
ENTRIES = ("svcxdp_map_entries", "Entries in a map")
CAPACITY = ("svcxdp_map_capacity", "Capacity (max_entries) of a map")
EVICTIONS = ("svcxdp_affinity_evictions", "Affinity entries the LRU reclaimed")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def label_text(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """`{a="x",b="y"}` as the text exposition format writes labels (escaped)."""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values)) + "}"


SERVICE_LABELS = ("frontend", "protocol", "scope", "service")
# A backend's series names its frontend whole (protocol and scope too): one address:port
# is two frontends for TCP and UDP, and an external frontend and its cluster-scope twin
# share address, port and backends; without them their series had identical labels.
BACKEND_LABELS = ("service", "frontend", "protocol", "scope", "backend")
BACKEND_SAMPLE = BACKEND_FAMILY[0] + "_total"


@dataclass
class Naming:
    """What the ids in the maps stand for: label values, and their exposition text made
    once (not per scrape). Not thread-safe: its reader (DataplaneCollector) holds a lock."""
    services: dict[int, tuple[str, ...]] = field(default_factory=dict)   # svc id -> label values
    backends: dict[int, tuple[str, ...]] = field(default_factory=dict)   # backend id -> label values
    # backend id -> its sample's line up to the value, encoded once with the name: after
    # a change the family's lines are only put in order and joined, not made again (the
    # only copy of its text kept: with the family's lines, as much as the templates'
    # strings held before)
    backend_heads: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)
    service_heads: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)   # ... labels only
    _tops: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    _service_lines: tuple[np.ndarray, tuple[SampleLines, ...]] | None = field(default=None, repr=False,
                                                                              compare=False)
    _backend_lines: tuple[SampleLines, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def tops(self) -> tuple[int, int]:
        """(highest service id, highest backend id) named, kept until the next change."""
        if self._tops is None:
            self._tops = (max(self.services, default=0), max(self.backends, default=0))
        return self._tops

    def service_lines(self) -> tuple[np.ndarray, tuple[SampleLines, ...]]:
        """(the named service ids in id order, and per service family its lines in that
        order), made once per change."""
        if self._service_lines is None:
            heads = self.service_heads
            ids = sorted(heads)
            labels = [heads[svc_id] for svc_id in ids]
            self._service_lines = (np.array(ids, np.int64),
                                   tuple(SampleLines.of([f"{name}_total".encode() + text for text in labels])
                                         for name, _ in SERVICE_FAMILIES))
        return self._service_lines

    def backend_lines(self) -> tuple[SampleLines, np.ndarray]:
        """(the named backends' lines in id order, and per backend id up to the highest
        named its line's number, -1 where none), made once per change from the heads."""
        if self._backend_lines is None:
            heads = self.backend_heads
            ids = np.array(list(heads), np.int64)
            order = np.argsort(ids, kind="stable")
            line_of = np.full(self.tops()[1] + 1, -1, np.int64)
            line_of[ids[order]] = np.arange(len(ids))
            encoded = list(heads.values())
            self._backend_lines = (SampleLines.of([encoded[i] for i in order.tolist()]), line_of)
        return self._backend_lines

    def _changed(self) -> None:
        self._tops = self._service_lines = self._backend_lines = None

    def add(self, fe: Frontend, inst, owner: str) -> None:
        self._changed()
        values = (f"{fe.vip}:{fe.port}", fe.protocol, fe.scope, owner)
        self.services[inst.svc_id] = values
        self.service_heads[inst.svc_id] = f"{label_text(SERVICE_LABELS, values)} ".encode()
        for (ip, port), bid in inst.backend_ids.items():
            bvalues = (owner, *values[:3], f"{ip}:{port}")
            self.backends[bid] = bvalues
            self.backend_heads[bid] = f"{BACKEND_SAMPLE}{label_text(BACKEND_LABELS, bvalues)} ".encode()

    def remove(self, fe: Frontend, inst) -> None:
        """Forget a record's ids, unless they already name another frontend's."""
        self._changed()
        frontend = f"{fe.vip}:{fe.port}"
        named = self.services.get(inst.svc_id)
        if named is not None and named[0] == frontend and named[1:3] == (fe.protocol, fe.scope):
            del self.services[inst.svc_id]
            del self.service_heads[inst.svc_id]
        for (ip, port), bid in inst.backend_ids.items():
            bnamed = self.backends.get(bid)
            if bnamed is not None and bnamed[1:] == (frontend, fe.protocol, fe.scope, f"{ip}:{port}"):
                del self.backends[bid]
                del self.backend_heads[bid]


def _same_ids(a, b) -> bool:
    """Two records of a frontend name the same ids (all Naming reads of them)."""
    return a.svc_id == b.svc_id and a.backend_ids == b.backend_ids


def naming_of(records: dict, owner: Callable[[Frontend], str] = lambda fe: "") -> Naming:
    """From installed records (dataplane.installed.Installed by frontend)."""
    naming = Naming()
    for fe, inst in records.items():
        naming.add(fe, inst, owner(fe))
    return naming


class AgentNaming:
    """The agent's own state names the ids (no map is read for it). After the agent wrote
    the maps, settled adopted records (MapWriter.settle) or learnt a service's name, only
    the frontends whose record's ids or owner changed (the writer replaces a record when it
    rewrites a frontend) are named again: one change at 10,000 services costs a pass over
    the records, not a rebuild."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self._key: tuple[int, int, int] | None = None
        self._seen: dict[Frontend, tuple[object, str]] = {}   # frontend -> (record, owner)
        self._naming = Naming()

    def __call__(self) -> Naming:
        agent = self.agent
        writer = agent.writer
        key = (id(writer), writer.revision, agent.owners_version)
        if key == self._key:
            return self._naming
        records = dict(writer.records())
        owner_of = agent.owner_of
        changed = {}
        seen_of = self._seen.get
        for fe, inst in records.items():
            owner = owner_of(fe)
            seen = seen_of(fe)
            if seen is not None and seen[1] == owner and (seen[0] is inst or _same_ids(seen[0], inst)):
                if seen[0] is not inst:   # a settled record: the same names, hold the new one
                    self._seen[fe] = (inst, owner)
                continue
            changed[fe] = (inst, owner)
        gone = [fe for fe in self._seen if fe not in records]
        for fe in gone + [fe for fe in changed if fe in self._seen]:
            self._naming.remove(fe, self._seen.pop(fe)[0])
        for fe, (inst, owner) in changed.items():
            self._naming.add(fe, inst, owner)
            self._seen[fe] = (inst, owner)
        self._key = key
        return self._naming
