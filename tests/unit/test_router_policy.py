"""The routing policy: the shipped default, ISO durations, and validation messages."""

import copy
from collections.abc import Callable
from datetime import timedelta
from importlib import resources
from typing import Any

import pytest
import yaml

from services.router.policy import (
    PolicyError,
    default_policy,
    describe_policy,
    format_iso_duration,
    parse_iso_duration,
    parse_policy,
)

DEFAULT_TEXT = resources.files("services.router").joinpath("policy.yaml").read_text(encoding="utf-8")


def default_dict() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(DEFAULT_TEXT))


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(yaml.safe_dump(raw, sort_keys=False))
    return caught.value.messages


def test_default_policy_loads_as_the_contract_shows() -> None:
    policy = default_policy()

    assert policy.version == 1
    assert [rule.name for rule in policy.rules] == [
        "protect-serious",
        "crisis",
        "serious",
        "routine-in-village",
        "default",
    ]
    assert policy.sla["critical"].accept == timedelta(minutes=30)
    assert policy.sla["low"].resolve == timedelta(days=30)
    assert policy.load_weight == {"critical": 3, "high": 2, "medium": 1, "low": 1}
    assert policy.offers_per_tier == 2
    assert policy.lateral is True
    assert policy.rules[1].notify_supervisors == ["county"]
    assert policy.rules[1].require.specialty == "crisis_intervention"
    assert policy.rules[0].require.certification == "intermediate"
    assert policy.rules[3].require.certification == "none"


@pytest.mark.parametrize(
    ("category", "risk", "rule"),
    [
        ("child_protection", "critical", "protect-serious"),
        ("mental_health", "high", "protect-serious"),
        ("child_protection", "medium", "default"),
        ("elderly_care", "critical", "crisis"),
        ("elderly_care", "high", "serious"),
        ("mental_health", "low", "routine-in-village"),
        ("livelihood", "medium", "default"),
    ],
)
def test_first_matching_rule_wins(category: str, risk: str, rule: str) -> None:
    assert default_policy().match(category, risk).name == rule


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT30M", timedelta(minutes=30)),
        ("PT24H", timedelta(hours=24)),
        ("P3D", timedelta(days=3)),
        ("P2W", timedelta(weeks=2)),
        ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
        ("PT1.5S", timedelta(seconds=1.5)),
        ("pt45m", timedelta(minutes=45)),
    ],
)
def test_iso_durations_are_parsed(text: str, expected: timedelta) -> None:
    assert parse_iso_duration(text) == expected


@pytest.mark.parametrize("text", ["30M", "P", "PT", "P1DT", "PT1H30", "1 hour", "", "P1Y", "P2M", "PT-5M"])
def test_malformed_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_iso_duration(text)


@pytest.mark.parametrize("text", ["PT30M", "P3D", "P1DT2H", "PT1H0M5S", "P14D"])
def test_durations_format_back_to_iso(text: str) -> None:
    assert parse_iso_duration(format_iso_duration(parse_iso_duration(text))) == parse_iso_duration(text)


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        target = raw
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set(["rules", 2, "when", "category"], ["foo"]), "rules[2] (serious).when.category: unknown category 'foo'"),
        (_set(["rules", 1, "when", "risk"], ["severe"]), "rules[1] (crisis).when.risk: unknown risk level 'severe'"),
        (_set(["rules", 2, "when", "risk"], []), "rules[2] (serious).when.risk: must not be empty"),
        (_set(["rules", 0, "tier"], "province"), "rules[0] (protect-serious).tier: unknown tier 'province'"),
        (
            _set(["rules", 0, "require", "certification"], "doctor"),
            "rules[0] (protect-serious).require.certification: unknown certification 'doctor'",
        ),
        (
            _set(["rules", 1, "require", "specialty"], "cooking"),
            "rules[1] (crisis).require.specialty: unknown specialty 'cooking'",
        ),
        (
            _set(["rules", 1, "notify_supervisors"], ["province"]),
            "rules[1] (crisis).notify_supervisors: unknown tier 'province'",
        ),
        (_delete(["rules", 0, "tier"]), "rules[0] (protect-serious).tier: required"),
        (_delete(["rules", 2, "name"]), "rules[2].name: required"),
        (_set(["rules", 3, "name"], "crisis"), "rules[3] (crisis).name: duplicate rule name, already used by rules[1]"),
        (_set(["sla", "low", "accept"], "tomorrow"), "sla.low.accept: bad duration 'tomorrow'"),
        (_set(["sla", "low", "resolve"], "PT0S"), "sla.low.resolve: bad duration 'PT0S': must be longer than zero"),
        (_set(["sla", "high", "accept"], "P8D"), "sla.high: accept (P8D) must not be longer than resolve (P7D)"),
        (_delete(["sla", "low"]), "sla: missing risk level 'low'"),
        (_set(["sla", "extreme"], {"accept": "PT5M", "resolve": "P1D"}), "sla: unknown risk level 'extreme'"),
        (_delete(["load_weight", "high"]), "load_weight: missing risk level 'high'"),
        (_set(["load_weight", "low"], 0), "load_weight.low: Input should be greater than or equal to 1"),
        (_set(["offers_per_tier"], 0), "offers_per_tier: Input should be greater than or equal to 1"),
        (_delete(["lateral"]), "lateral: required"),
        # `version` is the policy's revision (carried as `policy_version` in routed events): any n >= 1.
        (_set(["version"], 0), "version: Input should be greater than or equal to 1"),
        (_delete(["version"]), "version: required"),
    ],
)
def test_each_validation_error_names_rule_and_field(change: Callable[[dict[str, Any]], None], message: str) -> None:
    raw = default_dict()
    change(raw)

    assert any(problem.startswith(message) for problem in problems_of(raw)), problems_of(raw)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (["rules", 2], "rules[2] (serious).colour: unknown key"),
        (["rules", 2, "when"], "rules[2] (serious).when.colour: unknown key"),
        (["rules", 0, "require"], "rules[0] (protect-serious).require.colour: unknown key"),
        (["sla", "low"], "sla.low.colour: unknown key"),
        ([], "colour: unknown key"),
    ],
)
def test_unknown_keys_anywhere_are_rejected(path: list[Any], message: str) -> None:
    raw = default_dict()
    target = raw
    for key in path:
        target = target[key]
    target["colour"] = "red"

    assert problems_of(raw) == [message]


def test_a_load_weight_beyond_any_capacity_is_refused_naming_the_risk_level() -> None:
    raw = default_dict()
    raw["load_weight"]["critical"] = 1_000_000_000_000

    assert problems_of(raw) == ["load_weight.critical: Input should be less than or equal to 1000"]


def test_every_problem_is_reported_at_once() -> None:
    raw = default_dict()
    raw["rules"][0]["tier"] = "province"
    raw["rules"][2]["when"]["category"] = ["foo"]
    raw["sla"]["low"]["accept"] = "soon"

    assert len(problems_of(raw)) == 3


def test_rule_after_a_catch_all_is_unreachable() -> None:
    raw = default_dict()
    raw["rules"].append({"name": "late", "when": {"risk": ["low"]}, "tier": "county"})

    assert problems_of(raw) == ["rules[5] (late): unreachable, it comes after the catch-all rules[4] (default)"]


def test_when_matching_every_value_counts_as_a_catch_all() -> None:
    raw = default_dict()
    raw["rules"][3]["when"] = {"risk": ["low", "medium", "high", "critical"]}

    assert problems_of(raw) == [
        "rules[4] (default): unreachable, it comes after the catch-all rules[3] (routine-in-village)"
    ]


def test_rule_fully_shadowed_by_earlier_rules_is_unreachable() -> None:
    raw = default_dict()
    shadowed = {"name": "elderly-high", "when": {"category": ["elderly_care"], "risk": ["high"]}, "tier": "county"}
    raw["rules"].insert(3, shadowed)

    assert problems_of(raw) == [
        "rules[3] (elderly-high): unreachable, every case it matches is taken by rules[2] (serious)"
    ]


def test_last_rule_must_be_a_catch_all() -> None:
    raw = default_dict()
    del raw["rules"][4]

    (problem,) = problems_of(raw)
    assert problem.startswith("rules[3] (routine-in-village).when: the last rule must match every case")


def test_policy_without_rules_is_rejected() -> None:
    raw = default_dict()
    raw["rules"] = []

    assert problems_of(raw) == ["rules: at least one rule is needed, and the last one must match every case"]


@pytest.mark.parametrize("text", ["version: [1", "- just a list", ""])
def test_text_that_is_not_a_policy_mapping_is_rejected(text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)

    assert caught.value.messages[0].startswith("policy: ")


def test_policy_error_is_a_value_error_with_every_message_in_its_text() -> None:
    error = PolicyError(["a: one", "b: two"])

    assert isinstance(error, ValueError)
    assert str(error) == "a: one\nb: two"


def test_describe_policy_lists_rules_in_evaluation_order() -> None:
    text = describe_policy(default_policy())

    positions = [text.index(f". {name}\n") for name in ("protect-serious", "crisis", "serious", "default")]
    assert positions == sorted(positions)
    assert "risk in [critical]" in text
    assert "specialty crisis_intervention" in text
    assert "supervisors at county" in text
    assert "every case not matched above" in text
    assert "critical  PT30M" in text
