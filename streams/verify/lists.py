"""Disposable, role-account and free-provider lists (data files), and typo suggestions."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["Lists", "MiscFlags", "load_lists", "osa_distance"]


def _read(name: str) -> list[str]:
    text = resources.files("streams.verify").joinpath("data", name).read_text(encoding="utf-8")
    return _lines(text)


def _lines(text: str) -> list[str]:
    return [
        line.strip().lower()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (Levenshtein plus adjacent transpositions); gives up
    with ``limit + 1`` once the distance must exceed ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


@dataclass(frozen=True)
class MiscFlags:
    is_disposable: bool
    is_role_account: bool
    is_free_provider: bool
    suggestion: str | None


class Lists:
    def __init__(
        self, disposable: set[str], roles: set[str], free: set[str], typo_targets: list[str]
    ) -> None:
        self.disposable = disposable
        self.roles = roles
        self.free = free
        self.typo_targets = typo_targets
        self._known = set(typo_targets)
        self.suggest = lru_cache(maxsize=65536)(self._suggest)

    def is_disposable(self, domain: str) -> bool:
        # a subdomain of a disposable domain is disposable too (x.mailinator.com)
        parts = domain.split(".")
        return any(".".join(parts[i:]) in self.disposable for i in range(len(parts) - 1))

    def _suggest(self, domain: str) -> str | None:
        # a typo domain may be a disposable/typosquat one too (gmial.com is listed): still suggest
        if domain in self._known:
            return None
        limit = 1 if len(domain) <= 8 else 2
        best: tuple[int, str] | None = None
        for target in self.typo_targets:
            d = osa_distance(domain, target, limit)
            if d <= limit and (best is None or d < best[0]):
                best = (d, target)
        return best[1] if best else None

    def flags(self, local_part: str, ascii_domain: str) -> MiscFlags:
        local = local_part.lower().split("+", 1)[0]
        return MiscFlags(
            is_disposable=self.is_disposable(ascii_domain),
            is_role_account=local in self.roles,
            is_free_provider=ascii_domain in self.free,
            suggestion=self.suggest(ascii_domain),
        )


def load_lists(extra_dir: Path | None = None) -> Lists:
    """The shipped lists, plus ``disposable.txt`` / ``role_accounts.txt`` / ``free_providers.txt``
    from ``extra_dir`` when given (operators extend lists without a release)."""
    from disposable_email_domains import blocklist

    disposable = set(blocklist) | set(_read("disposable_extra.txt"))
    roles = set(_read("role_accounts.txt"))
    free_list = _read("free_providers.txt")
    if extra_dir is not None:
        for name, target in (("disposable.txt", disposable), ("role_accounts.txt", roles)):
            path = extra_dir / name
            if path.exists():
                target.update(_lines(path.read_text(encoding="utf-8")))
        path = extra_dir / "free_providers.txt"
        if path.exists():
            free_list += _lines(path.read_text(encoding="utf-8"))
    targets = list(dict.fromkeys(free_list + _read("typo_targets.txt")))
    return Lists(disposable, roles, set(free_list), targets)
