"""Load ``schemas/*.avsc`` once: parsed current schemas, their fingerprints, and every released
version from ``schemas/history`` so records written by an older producer still decode.

The history files are self-contained (shared types inlined) so each one stands alone as the
exact schema some producer once wrote with.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from schemas import SCHEMA_DIR

__all__ = [
    "RECORD_NAMES",
    "SchemaSet",
    "SchemaVersion",
    "inline_named_types",
    "load_schema_set",
    "snapshot_history",
]

RECORD_NAMES: tuple[str, ...] = (
    "EmailRequest",
    "VerificationResult",
    "DeliveryTask",
    "DeliveryEvent",
    "Rejection",
    "VerifyTask",
    "Suppression",
    "WebhookBatch",
)
_NAMESPACE = "io.postwire"
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


@dataclass(frozen=True)
class SchemaVersion:
    record: str
    version: int | None  # None: the current working copy
    raw: Any  # self-contained JSON
    parsed: Any
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO, as in single-object encoding


@dataclass
class SchemaSet:
    current: dict[str, SchemaVersion] = field(default_factory=dict)
    history: dict[str, list[SchemaVersion]] = field(default_factory=dict)

    def symbols(self, record: str, field_name: str) -> tuple[str, ...]:
        """The symbols of an enum field of a record's current schema (the .avsc stays the one
        list of event types, priorities...)."""
        for f in self.current[record].raw["fields"]:
            if f["name"] == field_name:
                kinds = f["type"] if isinstance(f["type"], list) else [f["type"]]
                for kind in kinds:
                    if isinstance(kind, dict) and kind.get("type") == "enum":
                        return tuple(kind["symbols"])
        raise KeyError(f"{record}.{field_name} is not an enum field")

    def all_versions(self) -> list[SchemaVersion]:
        found = list(self.current.values())
        for versions in self.history.values():
            found.extend(versions)
        return found


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect_named(schema: Any, namespace: str | None, out: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_named(branch, namespace, out)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind in {"record", "enum", "fixed", "error"}:
        ns = schema.get("namespace", namespace)
        full = _fullname(schema["name"], ns)
        out[full] = schema
        for fld in schema.get("fields", []):
            _collect_named(fld["type"], full.rpartition(".")[0] or None, out)
    elif kind == "array":
        _collect_named(schema["items"], namespace, out)
    elif kind == "map":
        _collect_named(schema["values"], namespace, out)


def inline_named_types(schema: Any, named: dict[str, Any]) -> Any:
    """Return ``schema`` with references to ``named`` types replaced by their definition at the
    first use (later uses stay references, as Avro requires)."""
    seen: set[str] = set()

    def walk(node: Any, namespace: str | None) -> Any:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = _fullname(node, namespace)
            if full in named and full not in seen:
                seen.add(full)
                definition = copy.deepcopy(named[full])
                definition["name"] = full.rpartition(".")[2]
                definition["namespace"] = full.rpartition(".")[0]
                return walk_named(definition, definition["namespace"])
            return full if full in named or full in seen else node
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in {"record", "enum", "fixed", "error"}:
                ns = node.get("namespace", namespace)
                seen.add(_fullname(node["name"], ns))
                return walk_named(node, ns)
            if kind == "array":
                return {**node, "items": walk(node["items"], namespace)}
            if kind == "map":
                return {**node, "values": walk(node["values"], namespace)}
            return (
                {**node, "type": walk(kind, namespace)} if isinstance(kind, (dict, list)) else node
            )
        return node

    def walk_named(node: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        if "fields" not in node:
            return node
        fields = [{**fld, "type": walk(fld["type"], namespace)} for fld in node["fields"]]
        return {**node, "fields": fields}

    return walk(schema, None)


def _version(record: str, version: int | None, raw: Any) -> SchemaVersion:
    parsed = parse_schema(raw, named_schemas={})
    canonical = to_parsing_canonical_form(parsed)
    return SchemaVersion(
        record=record,
        version=version,
        raw=raw,
        parsed=parsed,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


def load_schema_set(schema_dir: Path = SCHEMA_DIR) -> SchemaSet:
    named: dict[str, Any] = {}
    _collect_named(json.loads((schema_dir / "common.avsc").read_text()), None, named)
    result = SchemaSet()
    for record in RECORD_NAMES:
        raw = json.loads((schema_dir / f"{record}.avsc").read_text())
        result.current[record] = _version(record, None, inline_named_types(raw, named))
        versions = []
        history_dir = schema_dir / "history" / record
        for path in sorted(history_dir.glob("v*.avsc"), key=lambda p: int(p.stem[1:])):
            versions.append(_version(record, int(path.stem[1:]), json.loads(path.read_text())))
        result.history[record] = versions
    return result


def snapshot_history(schema_dir: Path = SCHEMA_DIR) -> list[Path]:
    """Write ``history/<Record>/v<N+1>.avsc`` for every record whose working copy differs from
    its latest released version. Run before releasing a schema change."""
    schemas = load_schema_set(schema_dir)
    written = []
    for record, current in schemas.current.items():
        versions = schemas.history[record]
        if versions and versions[-1].fingerprint == current.fingerprint:
            continue
        number = versions[-1].version + 1 if versions and versions[-1].version else 1
        path = schema_dir / "history" / record / f"v{number}.avsc"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current.raw, indent=2) + "\n")
        written.append(path)
    return written
