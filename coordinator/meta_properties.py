"""`<data_dir>/meta.properties`: which cluster and node a data directory belongs to.

Written on the first start (Kafka's format: `key=value` lines with `version`, `cluster.id`,
`node.id`), checked on every later one: a data directory of node 1 started as node 0, or
copied from another cluster, is refused before anything is written to it.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "meta.properties"


class MetaPropertiesError(Exception):
    """The data directory belongs to another node, or its meta.properties is unreadable."""


@dataclass(frozen=True)
class MetaProperties:
    cluster_id: str
    node_id: int


def _parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def read_meta_properties(data_dir: Path) -> MetaProperties | None:
    """The data dir's meta.properties without writing anything; None when absent or damaged
    (a worker reads it to name its cluster in WorkerHello)."""
    try:
        props = _parse((data_dir / FILE_NAME).read_text())
        return MetaProperties(props["cluster.id"], int(props["node.id"]))
    except (OSError, KeyError, ValueError):
        return None


def ensure_meta_properties(data_dir: Path, node_id: int) -> MetaProperties:
    """Read (or create) meta.properties; raise MetaPropertiesError on a node id mismatch."""
    path = data_dir / FILE_NAME
    try:
        props = _parse(path.read_text())
    except FileNotFoundError:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"#qnode\nversion=1\ncluster.id={cluster_id}\nnode.id={node_id}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return MetaProperties(cluster_id, node_id)
    try:
        stored_node = int(props["node.id"])
        cluster_id = props["cluster.id"]
    except (KeyError, ValueError):
        raise MetaPropertiesError(f"{path} is damaged: no valid node.id / cluster.id") from None
    if stored_node != node_id:
        raise MetaPropertiesError(
            f"data dir {data_dir} belongs to node {stored_node}, not node {node_id} "
            f"(see {path}); use --node-id {stored_node} or another --data-dir"
        )
    return MetaProperties(cluster_id, stored_node)
