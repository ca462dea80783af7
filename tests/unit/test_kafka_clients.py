"""Every Kafka client postwire makes is built from ``client_options`` (the cluster, SASL and TLS),
and the faust app gets ``broker_credentials``: a client made any other way would connect to a
secured cluster without credentials and fail, or silently talk to another cluster. This reads
the sources (tests included), so a new client added without them fails here, not in production."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
# the one place that may name the cluster in aiokafka's words
BUILDER = ROOT / "streams" / "kafka" / "config.py"


def _sources() -> list[Path]:
    # the tests too: the suite runs against a secured cluster given POSTWIRE_KAFKA_* settings
    return sorted(p for part in ("streams", "sinks", "tests") for p in (ROOT / part).rglob("*.py"))


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _from_client_options(value: ast.expr) -> bool:
    """``**client_options(...)``, or ``**<name>`` where the name holds such options (``client``,
    ``options``, ``self._config``, ...: what the constructor is handed was built by it)."""
    if isinstance(value, ast.Call):
        return _name(value.func) == "client_options"
    return isinstance(value, ast.Name | ast.Attribute) and any(
        word in ast.unparse(value).lower() for word in ("client", "options", "config")
    )


def _calls() -> list[tuple[Path, ast.Call]]:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                found.append((path, node))
    return found


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def test_every_aiokafka_client_is_built_from_client_options() -> None:
    made = [(p, c) for p, c in _calls() if _name(c.func) in CLIENTS]
    assert len(made) >= 20, "the scan found too few clients: is it reading the sources?"
    bad = [
        _where(path, call)
        for path, call in made
        if not any(k.arg is None and _from_client_options(k.value) for k in call.keywords)
    ]
    assert not bad, f"Kafka clients built without **client_options(...): {bad}"


def test_no_code_names_the_cluster_but_the_builder() -> None:
    bad = [
        _where(path, kw)
        for path, call in _calls()
        if path != BUILDER
        for kw in call.keywords
        if kw.arg in {"bootstrap_servers", "security_protocol", "sasl_plain_password"}
    ]
    assert not bad, f"clients configured by hand instead of by client_options: {bad}"


def test_the_faust_app_gets_the_broker_credentials() -> None:
    apps = [(p, c) for p, c in _calls() if ast.unparse(c.func) == "faust.App"]
    assert apps, "no faust.App found"
    bad = [
        _where(path, call)
        for path, call in apps
        if not any(
            k.arg == "broker_credentials"
            and isinstance(k.value, ast.Call)
            and _name(k.value.func) == "broker_credentials"
            for k in call.keywords
        )
    ]
    assert not bad, f"faust apps without broker_credentials=broker_credentials(...): {bad}"
