"""Secondary indexes of the embedded store: (key, value) entries taken from object fields.

Every object's labels are indexed (index "labels"); a few kinds also index one field
(`FIELD_INDEXES`): a map field gives one entry per key/value pair (a Service's
`spec.selector`), a string field one entry with key "" (a Pod's `deletionTimestamp`), and a
path through a list ("*") one entry per element (the uids of a Pod's ownerReferences).

The entries live in the `field_index` table, written in the same transaction as the object,
so a lookup never sees an index that disagrees with the objects. They turn
"the slices labelled kubernetes.io/service-name=web", "the services whose selector could
match these labels", "the pods a Deployment owns" and "the terminating pods" into index
seeks instead of scans.
"""
from __future__ import annotations

from typing import Any

from .interface import INDEX_DELETION, INDEX_LABELS, INDEX_OWNER, INDEX_SELECTOR

# kind -> {index name: JSON path in the object}
FIELD_INDEXES: dict[str, dict[str, tuple[str, ...]]] = {
    "Service": {INDEX_SELECTOR: ("spec", "selector")},
    "Pod": {INDEX_DELETION: ("metadata", "deletionTimestamp"),
            INDEX_OWNER: ("metadata", "ownerReferences", "*", "uid")},
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS field_index (
    kind TEXT NOT NULL, field TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    namespace TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (kind, field, key, value, namespace, name)) WITHOUT ROWID
"""

Entry = tuple[str, str, str]   # (field, key, value)


def _at(node: Any, path: tuple[str, ...]) -> list[Any]:
    """The values at `path` ("*" steps into every element of a list)."""
    for i, part in enumerate(path):
        if part == "*":
            if not isinstance(node, list):
                return []
            return [v for item in node for v in _at(item, path[i + 1:])]
        if not isinstance(node, dict):
            return []
        node = node.get(part)
    return [] if node is None else [node]


def _pairs(field: str, value: Any) -> list[Entry]:
    if isinstance(value, str):
        return [(field, "", value)]
    if isinstance(value, dict):
        return [(field, k, v) for k, v in value.items() if isinstance(v, str)]
    return []


def entries(kind: str, doc: dict[str, Any]) -> set[Entry]:
    """The index entries of one object (its JSON form)."""
    out = set(_pairs(INDEX_LABELS, (doc.get("metadata") or {}).get("labels")))
    for field, path in FIELD_INDEXES.get(kind, {}).items():
        for value in _at(doc, path):
            out.update(_pairs(field, value))
    return out


def backfill_sql() -> list[str]:
    """Statements that index the objects of a store made before the index existed."""
    stmts = ["INSERT OR IGNORE INTO field_index (kind, field, key, value, namespace, name) "
             f"SELECT o.kind, '{INDEX_LABELS}', j.key, j.value, o.namespace, o.name "
             "FROM objects o, json_each(o.labels) j WHERE j.type = 'text'"]
    for kind, fields in FIELD_INDEXES.items():
        for field, path in fields.items():
            if "*" in path:  # one list step: the values of its elements at the rest of the path
                star = path.index("*")
                list_path, item_path = "$." + ".".join(path[:star]), "$." + ".".join(path[star + 1:])
                stmts.append(
                    "INSERT OR IGNORE INTO field_index (kind, field, key, value, namespace, name) "
                    f"SELECT o.kind, '{field}', '', json_extract(j.value, '{item_path}'), o.namespace, o.name "
                    f"FROM objects o, json_each(o.data, '{list_path}') j "
                    f"WHERE o.kind = '{kind}' AND json_type(j.value, '{item_path}') = 'text'")
                continue
            json_path = "$." + ".".join(path)
            stmts.append(
                "INSERT OR IGNORE INTO field_index (kind, field, key, value, namespace, name) "
                f"SELECT o.kind, '{field}', '', json_extract(o.data, '{json_path}'), o.namespace, o.name "
                f"FROM objects o WHERE o.kind = '{kind}' AND json_type(o.data, '{json_path}') = 'text'")
            stmts.append(
                "INSERT OR IGNORE INTO field_index (kind, field, key, value, namespace, name) "
                f"SELECT o.kind, '{field}', j.key, j.value, o.namespace, o.name "
                f"FROM objects o, json_each(o.data, '{json_path}') j "
                f"WHERE o.kind = '{kind}' AND json_type(o.data, '{json_path}') = 'object' AND j.type = 'text'")
    return stmts
