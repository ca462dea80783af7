"""postwire stream processors: settings, codec, topics, embedded stack, faust stages, CLI."""

__all__: list[str] = []
