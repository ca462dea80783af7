"""One module per stage: a pure core (no I/O, time as a parameter) plus ``register(app, ...)``,
the thin faust shell around it."""

__all__: list[str] = []
