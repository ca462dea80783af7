"""BACKWARD compatibility (Avro schema resolution rules): can a reader on the new schema read
every record written with an old one? Returns the problems found, empty when compatible."""

from __future__ import annotations

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


def _check(reader: Any, writer: Any, rn: _Names, wn: _Names, path: str, out: list[str]) -> None:
    reader, writer = rn.resolve(reader), wn.resolve(writer)
    rk, wk = _kind(reader), _kind(writer)
    if wk == "union":
        for branch in writer:
            _check(reader, branch, rn, wn, path, out)
        return
    if rk == "union":
        if not any(_readable(branch, writer, rn, wn) for branch in reader):
            out.append(f"{path}: no branch of the new union reads old type {wk}")
        return
    if wk in _PROMOTIONS or wk in {"null", "boolean", "double"}:
        if rk != wk and rk not in _PROMOTIONS.get(wk, set()):
            out.append(f"{path}: type changed from {wk} to {rk}")
        return
    if rk != wk:
        out.append(f"{path}: type changed from {wk} to {rk}")
        return
    if wk == "array":
        _check(reader["items"], writer["items"], rn, wn, f"{path}[]", out)
    elif wk == "map":
        _check(reader["values"], writer["values"], rn, wn, f"{path}{{}}", out)
    elif wk in _NAMED and _short(reader["name"]) != _short(writer["name"]):
        out.append(f"{path}: named type changed from {writer['name']} to {reader['name']}")
    elif wk == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            out.append(f"{path}: enum lost symbols {sorted(missing)} and has no default")
    elif wk == "fixed" and reader["size"] != writer["size"]:
        out.append(f"{path}: fixed size changed from {writer['size']} to {reader['size']}")
    elif wk in {"record", "error"}:
        old_fields = {f["name"]: f for f in writer["fields"]}
        for fld in reader["fields"]:
            sub = f"{path}.{fld['name']}"
            if fld["name"] in old_fields:
                _check(fld["type"], old_fields[fld["name"]]["type"], rn, wn, sub, out)
            elif "default" not in fld:
                out.append(f"{sub}: new field without a default")


def _readable(reader: Any, writer: Any, rn: _Names, wn: _Names) -> bool:
    problems: list[str] = []
    _check(reader, writer, rn, wn, "", problems)
    return not problems


def backward_problems(new: Any, old: Any) -> list[str]:
    """Problems a reader using ``new`` would have with data written using ``old``."""
    problems: list[str] = []
    _check(new, old, _Names(new), _Names(old), _short(str(new.get("name", "root"))), problems)
    return problems
