"""BACKWARD compatibility (Avro schema resolution rules): can a reader on the new schema read
every record written with an old one? Returns the problems found, empty when compatible."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["backward_problems"]

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_NAMED = {"record", "enum", "fixed", "error"}


class _Names:
    """Resolves by-name references inside one self-contained schema."""

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, dict[str, Any]] = {}
        self._collect(schema, None)

    def _collect(self, node: Any, namespace: str | None) -> None:
        if isinstance(node, list):
            for branch in node:
                self._collect(branch, namespace)
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind in _NAMED:
                ns = node.get("namespace", namespace)
                full = node["name"] if "." in node["name"] or not ns else f"{ns}.{node['name']}"
                self.named[full] = {**node, "_fullname": full}
                for fld in node.get("fields", []):
                    self._collect(fld["type"], ns)
            elif kind == "array":
                self._collect(node["items"], namespace)
            elif kind == "map":
                self._collect(node["values"], namespace)
            elif isinstance(kind, (dict, list)):
                self._collect(kind, namespace)

    def resolve(self, node: Any) -> Any:
        """Follow a by-name reference; unwrap ``{"type": "long", "logicalType": ...}``."""
        if isinstance(node, str):
            return self.named.get(node, node)
        if isinstance(node, dict) and isinstance(node["type"], str):
            if node["type"] in self.named:
                return self.named[node["type"]]
            if node["type"] not in _NAMED and node["type"] not in {"array", "map"}:
                return node["type"]
        return node


def _kind(node: Any) -> str:
    if isinstance(node, list):
        return "union"
    if isinstance(node, dict):
        return str(node["type"])
    return str(node)


def _short(name: str) -> str:
    return name.rpartition(".")[2]


@dataclass
class _Checker:
    """Walks a reader schema against a writer schema, collecting what would not read."""

    rn: _Names
    wn: _Names
    out: list[str] = field(default_factory=list)

    def check(self, reader: Any, writer: Any, path: str) -> None:
        reader, writer = self.rn.resolve(reader), self.wn.resolve(writer)
        rk, wk = _kind(reader), _kind(writer)
        if wk == "union":
            for branch in writer:
                self.check(reader, branch, path)
        elif rk == "union":
            if not any(self.readable(branch, writer) for branch in reader):
                self.out.append(f"{path}: no branch of the new union reads old type {wk}")
        elif wk in _PROMOTIONS or wk in {"null", "boolean", "double"}:
            if rk != wk and rk not in _PROMOTIONS.get(wk, set()):
                self.out.append(f"{path}: type changed from {wk} to {rk}")
        elif rk != wk:
            self.out.append(f"{path}: type changed from {wk} to {rk}")
        else:
            self._same_kind(wk, reader, writer, path)

    def readable(self, reader: Any, writer: Any) -> bool:
        inner = _Checker(self.rn, self.wn)
        inner.check(reader, writer, "")
        return not inner.out

    def _same_kind(self, kind: str, reader: Any, writer: Any, path: str) -> None:
        if kind == "array":
            self.check(reader["items"], writer["items"], f"{path}[]")
        elif kind == "map":
            self.check(reader["values"], writer["values"], f"{path}{{}}")
        elif kind in _NAMED and _short(reader["name"]) != _short(writer["name"]):
            self.out.append(f"{path}: named type changed from {writer['name']} to {reader['name']}")
        elif kind == "enum":
            missing = set(writer["symbols"]) - set(reader["symbols"])
            if missing and "default" not in reader:
                self.out.append(f"{path}: enum lost symbols {sorted(missing)} and has no default")
        elif kind == "fixed" and reader["size"] != writer["size"]:
            self.out.append(f"{path}: fixed size changed from {writer['size']} to {reader['size']}")
        elif kind in {"record", "error"}:
            self._fields(reader, writer, path)

    def _fields(self, reader: Any, writer: Any, path: str) -> None:
        old_fields = {f["name"]: f for f in writer["fields"]}
        for fld in reader["fields"]:
            sub = f"{path}.{fld['name']}"
            if fld["name"] in old_fields:
                self.check(fld["type"], old_fields[fld["name"]]["type"], sub)
            elif "default" not in fld:
                self.out.append(f"{sub}: new field without a default")


def backward_problems(new: Any, old: Any) -> list[str]:
    """Problems a reader using ``new`` would have with data written using ``old``."""
    checker = _Checker(_Names(new), _Names(old))
    checker.check(new, old, _short(str(new.get("name", "root"))))
    return checker.out
