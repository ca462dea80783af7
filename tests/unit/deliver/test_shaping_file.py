"""The shaping file: the shipped rules, an operator's merged over them, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.deliver.shaping_file import load_rules, parse_duration, rules_from
from streams.errors import ConfigError

SHIPPED = {
    "yahoo-tss04",
    "yahoo-tss09",
    "microsoft-server-busy",
    "microsoft-rate-limited",
    "microsoft-blocklisted",
    "gmail-unusual-rate",
    "generic-421-busy",
}


def test_the_shipped_rules_load() -> None:
    rules = {r.name: r for r in rules_from(None)}
    assert set(rules) == SHIPPED
    yahoo = rules["yahoo-tss04"]
    assert (yahoo.action, yahoo.duration, yahoo.mx_suffixes) == (
        "suspend",
        3600.0,
        ("yahoodns.net",),
    )
    assert yahoo.codes == frozenset({421})
    assert yahoo.enhanced == frozenset({"4.7.0"})
    busy = rules["microsoft-server-busy"]
    assert (busy.action, busy.factor, busy.count, busy.window) == ("slow", 0.5, 3, 300.0)


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("90s", 90.0), ("30m", 1800.0), ("2 hours", 7200.0), ("1d", 86400.0),
     ("10 min", 600.0), ("4 secs", 4.0), ("3", 3.0)],
)  # fmt: skip
def test_durations(given: object, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("given", ["soon", "5 fortnights", "500ms", "", 0, -1, True, [1]])
def test_bad_durations(given: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(given)


def test_an_operator_changes_a_shipped_rule_field_by_field() -> None:
    rules = {
        r.name: r
        for r in rules_from('[[rule]]\nname = "yahoo-tss04"\nduration = "5s"\n', "ops.toml")
    }
    yahoo = rules["yahoo-tss04"]
    assert yahoo.duration == 5.0
    assert yahoo.pattern is not None
    assert yahoo.pattern.pattern == r"\[TSS04\]"  # kept from the shipped rule
    assert set(rules) == SHIPPED


def test_an_operator_turns_rules_off_adds_rules_or_drops_the_defaults() -> None:
    text = """
[[rule]]
name = "generic-421-busy"
enabled = false

[[rule]]
name = "comcast-rl"
code = [421, 451]
enhanced = "4.7.00"
text = 'RL0000'
mx_suffixes = [".comcast.net."]
action = "slow"
factor = 0.2
duration = "2h"
count = 2
window = "1 hour"
"""
    rules = {r.name: r for r in rules_from(text, "ops.toml")}
    assert "generic-421-busy" not in rules
    added = rules["comcast-rl"]
    assert list(rules)[-1] == "comcast-rl"  # after the shipped ones
    assert added.codes == frozenset({421, 451})
    assert added.enhanced == frozenset({"4.7.0"})
    assert added.mx_suffixes == ("comcast.net",)
    assert (added.factor, added.duration, added.count, added.window) == (0.2, 7200.0, 2, 3600.0)
    only = rules_from("defaults = false\n" + text, "ops.toml")
    assert [r.name for r in only] == ["comcast-rl"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[rule]\n", "not TOML"),
        ("rules = []\n", "field rules: Extra inputs"),
        ('[[rule]]\ncode = 421\n', "rule #1: field name is missing"),
        ('[[rule]]\nname = "a"\ncode = 421\naction = "suspend"\nduration = 1\n' * 2,
         "rule 'a' is given twice"),
        ('[[rule]]\nname = "a"\ncode = 421\naction = "pause"\nduration = 1\n',
         "rule 'a': field action"),
        ('[[rule]]\nname = "a"\ncode = 250\naction = "suspend"\nduration = 1\n',
         "rule 'a': field code: reply codes are 400-599"),
        ('[[rule]]\nname = "a"\nenhanced = "4.7"\naction = "suspend"\nduration = 1\n',
         "rule 'a': field enhanced: enhanced status codes look like"),
        ('[[rule]]\nname = "a"\ntext = "(unclosed"\naction = "suspend"\nduration = 1\n',
         "rule 'a': field text: not a regular expression"),
        ('[[rule]]\nname = "a"\naction = "suspend"\nduration = 1\n',
         "rule 'a': the rule: a rule needs at least one of code, enhanced, text"),
        ('[[rule]]\nname = "a"\ncode = 421\naction = "slow"\nduration = 1\n',
         "rule 'a': the rule: a slow rule needs a factor"),
        ('[[rule]]\nname = "a"\ncode = 421\naction = "slow"\nfactor = 2\nduration = 1\n',
         "rule 'a': field factor"),
        ('[[rule]]\nname = "a"\ncode = 421\naction = "suspend"\nduration = "soon"\n',
         "rule 'a': field duration: 'soon' is not a duration"),
        ('[[rule]]\nname = "a"\ncode = 421\naction = "suspend"\n', "rule 'a': the rule: duration is missing"),
        ('[[rule]]\nname = "a"\ncode = 421\naction = "suspend"\nduration = 1\nwhen = 3\n',
         "rule 'a': field when: Extra inputs"),
        ('[[rule]]\nname = "Has Spaces"\ncode = 421\naction = "suspend"\nduration = 1\n',
         "rule 'Has Spaces': field name"),
        ('[[rule]]\nname = "yahoo-tss04"\nmx_suffixes = ["bad host"]\n',
         "rule 'yahoo-tss04': field mx_suffixes"),
    ],
)  # fmt: skip
def test_a_bad_file_names_the_rule_and_the_field(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        rules_from(text, "ops.toml")
    message = str(caught.value)
    assert message.startswith("shaping file ops.toml: ")
    assert says in message


def test_load_rules_reads_the_file_or_says_why_not(tmp_path: Path) -> None:
    path = tmp_path / "shaping.toml"
    path.write_text('[[rule]]\nname = "gmail-unusual-rate"\nfactor = 0.1\n')
    rules = {r.name: r for r in load_rules(path)}
    assert rules["gmail-unusual-rate"].factor == 0.1
    assert {r.name for r in load_rules(None)} == SHIPPED
    with pytest.raises(ConfigError, match="cannot read the shaping file"):
        load_rules(tmp_path / "missing.toml")
