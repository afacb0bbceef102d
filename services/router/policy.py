"""The routing policy: which tier a case goes to and what its worker must have (CONTRACT §6)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.vocabulary import CATEGORIES, CERTIFICATIONS, RISK_LEVELS, TIERS


class PolicyError(ValueError):
    """A policy that cannot be used; `messages` name the rule and field of every problem."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:[.,]\d+)?)S)?)?"
)


def parse_iso_duration(text: str) -> timedelta:
    """Parse an ISO 8601 duration of the form PnWnDTnHnMnS into a timedelta."""
    value = text.strip().upper()
    match = _DURATION.fullmatch(value)
    if match is None or value == "P":
        # Years and months have no fixed length, so a deadline cannot be computed from them.
        if re.match(r"P(?:\d+Y|\d+M)", value):
            raise ValueError(f"bad duration {text!r}: years and months are not allowed, use days")
        raise ValueError(f"bad duration {text!r}: expected ISO 8601 like PT30M, PT24H or P3D")
    parts = {key: float(raw.replace(",", ".")) for key, raw in match.groupdict().items() if raw}
    try:
        return timedelta(**parts)
    except OverflowError:  # beyond timedelta's 999,999,999 days: a ValueError names the field
        raise ValueError(f"bad duration {text!r}: too long") from None


def format_iso_duration(duration: timedelta) -> str:
    """Format a timedelta as the shortest ISO 8601 duration (PnDTnHnMnS)."""
    hours, rest = divmod(duration.seconds, 3600)
    minutes, whole_seconds = divmod(rest, 60)
    seconds = whole_seconds + duration.microseconds / 1e6
    time = "".join(f"{n:g}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    days = f"{duration.days}D" if duration.days else ""
    if not days and not time:
        return "PT0S"
    return f"P{days}" + (f"T{time}" if time else "")


def _positive_duration(value: object) -> timedelta:
    duration = value if isinstance(value, timedelta) else None
    if isinstance(value, str):
        duration = parse_iso_duration(value)
    if duration is None:
        raise ValueError(f"bad duration {value!r}: expected an ISO 8601 string like PT30M")
    if duration <= timedelta(0):
        raise ValueError(f"bad duration {value!r}: must be longer than zero")
    return duration


Duration = Annotated[timedelta, BeforeValidator(_positive_duration)]


def _check_known(values: Iterable[str], allowed: tuple[str, ...], kind: str) -> None:
    unknown = [value for value in values if value not in allowed]
    if unknown:
        names = ", ".join(repr(value) for value in unknown)
        raise ValueError(f"unknown {kind} {names} (expected one of: {', '.join(allowed)})")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sla(_Strict):
    """Deadlines for one risk level: to accept an offer, and to resolve the case."""

    accept: Duration
    resolve: Duration

    @model_validator(mode="after")
    def _accept_before_resolve(self) -> Sla:
        if self.accept > self.resolve:
            raise ValueError(
                f"accept ({format_iso_duration(self.accept)}) must not be longer than "
                f"resolve ({format_iso_duration(self.resolve)})"
            )
        return self


class RuleWhen(_Strict):
    """The cases a rule applies to; a missing list matches every value."""

    category: list[str] | None = None
    risk: list[str] | None = None

    @field_validator("category")
    @classmethod
    def _known_categories(cls, value: list[str] | None) -> list[str] | None:
        return _non_empty_known(value, CATEGORIES, "category")

    @field_validator("risk")
    @classmethod
    def _known_risks(cls, value: list[str] | None) -> list[str] | None:
        return _non_empty_known(value, RISK_LEVELS, "risk level")


def _non_empty_known(value: list[str] | None, allowed: tuple[str, ...], kind: str) -> list[str] | None:
    if value is not None and not value:
        raise ValueError("must not be empty (leave it out to match every value)")
    _check_known(value or (), allowed, kind)
    return value


class Requirement(_Strict):
    """What the worker must have; no specialty means the case's own category."""

    specialty: str | None = None
    certification: str = "none"

    @field_validator("specialty")
    @classmethod
    def _specialty_is_category(cls, value: str | None) -> str | None:
        _check_known([value] if value is not None else [], CATEGORIES, "specialty")
        return value

    @field_validator("certification")
    @classmethod
    def _known_certification(cls, value: str) -> str:
        _check_known([value], CERTIFICATIONS, "certification")
        return value


class Rule(_Strict):
    """One routing rule: cases it matches go to `tier` and need a worker meeting `require`."""

    name: str = Field(min_length=1)
    when: RuleWhen | None = None
    tier: str
    require: Requirement = Requirement()
    notify_supervisors: list[str] = []

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, value: str) -> str:
        _check_known([value], TIERS, "tier")
        return value

    @field_validator("notify_supervisors")
    @classmethod
    def _known_tiers(cls, value: list[str]) -> list[str]:
        _check_known(value, TIERS, "tier")
        return value

    def matches(self, category: str, risk: str) -> bool:
        """Whether a case of this category and risk level falls under this rule."""
        when = self.when
        if when is None:
            return True
        return (when.category is None or category in when.category) and (when.risk is None or risk in when.risk)

    def cases(self) -> frozenset[tuple[str, str]]:
        """Every (category, risk) pair this rule matches."""
        return frozenset((c, r) for c in CATEGORIES for r in RISK_LEVELS if self.matches(c, r))

    @property
    def is_catch_all(self) -> bool:
        """Whether the rule matches every case."""
        return len(self.cases()) == len(CATEGORIES) * len(RISK_LEVELS)


# A case's share of a worker's capacity (network.MAX_CAPACITY at most); stored in an integer column.
MAX_LOAD_WEIGHT = 1_000


class Policy(_Strict):
    """A validated routing policy; rules are tried in order and the first match wins."""

    version: int = Field(ge=1)
    sla: dict[str, Sla]
    load_weight: dict[str, Annotated[int, Field(ge=1, le=MAX_LOAD_WEIGHT)]]
    offers_per_tier: int = Field(ge=1)
    lateral: bool
    rules: list[Rule]

    @field_validator("sla", "load_weight")
    @classmethod
    def _every_risk_level(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_known(value, RISK_LEVELS, "risk level")
        missing = [risk for risk in RISK_LEVELS if risk not in value]
        if missing:
            raise ValueError(f"missing risk level {', '.join(repr(risk) for risk in missing)}")
        return value

    @model_validator(mode="after")
    def _rules_route_every_case(self) -> Policy:
        problems = _rule_problems(self.rules)
        if problems:
            raise PolicyError(problems)
        return self

    def match(self, category: str, risk: str) -> Rule:
        """The first rule matching a case of this category and risk level."""
        for rule in self.rules:
            if rule.matches(category, risk):
                return rule
        raise LookupError(f"no rule matches category {category!r}, risk {risk!r}")


def _label(index: int, rule: object) -> str:
    name = rule.name if isinstance(rule, Rule) else rule.get("name") if isinstance(rule, dict) else None
    return f"rules[{index}] ({name})" if isinstance(name, str) and name else f"rules[{index}]"


def _rule_problems(rules: list[Rule]) -> list[str]:
    if not rules:
        return ["rules: at least one rule is needed, and the last one must match every case"]
    problems: list[str] = []
    first_index: dict[str, int] = {}
    matched: frozenset[tuple[str, str]] = frozenset()
    catch_all: int | None = None
    for index, rule in enumerate(rules):
        label = _label(index, rule)
        if rule.name in first_index:
            problems.append(f"{label}.name: duplicate rule name, already used by rules[{first_index[rule.name]}]")
        first_index.setdefault(rule.name, index)
        cases = rule.cases()
        if catch_all is not None:
            problems.append(f"{label}: unreachable, it comes after the catch-all {_label(catch_all, rules[catch_all])}")
        elif cases <= matched:
            earlier = ", ".join(_label(i, r) for i, r in enumerate(rules[:index]) if r.cases() & cases)
            problems.append(f"{label}: unreachable, every case it matches is taken by {earlier}")
        elif rule.is_catch_all:
            catch_all = index
        matched |= cases
    if catch_all is None:
        problems.append(
            f"{_label(len(rules) - 1, rules[-1])}.when: the last rule must match every case "
            "(leave out `when`) so that no case goes unrouted"
        )
    return problems


def _field_path(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    if not loc:
        return "policy"
    path = str(loc[0])
    rest = loc[1:]
    if loc[0] == "rules" and rest and isinstance(rest[0], int):
        raw_rules = raw.get("rules")
        rule = raw_rules[rest[0]] if isinstance(raw_rules, list) and rest[0] < len(raw_rules) else None
        path, rest = _label(rest[0], rule), rest[1:]
    for part in rest:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _messages(error: ValidationError, raw: dict[str, Any]) -> list[str]:
    messages: list[str] = []
    for detail in error.errors():
        cause = detail.get("ctx", {}).get("error")
        if isinstance(cause, PolicyError):
            messages.extend(cause.messages)
            continue
        if isinstance(cause, ValueError):
            text = str(cause)
        elif detail["type"] == "extra_forbidden":
            text = "unknown key"
        elif detail["type"] == "missing":
            text = "required"
        else:
            text = detail["msg"]
        messages.append(f"{_field_path(detail['loc'], raw)}: {text}")
    return messages


def parse_policy(text: str) -> Policy:
    """Parse and validate a policy from YAML text; raise PolicyError naming every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError([f"policy: not valid YAML: {error}"]) from error
    if not isinstance(raw, dict):
        raise PolicyError(["policy: expected a mapping with version, sla, load_weight, ... at the top"])
    try:
        return Policy.model_validate(raw)
    except ValidationError as error:
        raise PolicyError(_messages(error, raw)) from error


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise PolicyError if it cannot be read or used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyError([f"policy: cannot read {path}: {error.strerror or error}"]) from error
    return parse_policy(text)


def default_policy() -> Policy:
    """The policy shipped with the package (services/router/policy.yaml)."""
    return parse_policy(
        resources.files(__package__ or "services.router").joinpath("policy.yaml").read_text(encoding="utf-8")
    )


def _describe_when(when: RuleWhen | None) -> str:
    if when is None or (when.category is None and when.risk is None):
        return "every case not matched above"
    parts = []
    if when.category is not None:
        parts.append(f"category in [{', '.join(when.category)}]")
    if when.risk is not None:
        parts.append(f"risk in [{', '.join(when.risk)}]")
    return " and ".join(parts)


def _describe_rule(number: int, rule: Rule) -> str:
    specialty = rule.require.specialty or "the case's category"
    certification = rule.require.certification
    certification = "any" if certification == "none" else f"{certification} or higher"
    lines = [
        f"{number}. {rule.name}",
        f"   when:    {_describe_when(rule.when)}",
        f"   route:   {rule.tier}",
        f"   worker:  specialty {specialty}, certification {certification}",
    ]
    if rule.notify_supervisors:
        lines.append(f"   notify:  supervisors at {', '.join(rule.notify_supervisors)}")
    return "\n".join(lines)


def describe_policy(policy: Policy) -> str:
    """The policy in human-readable form: its rules in evaluation order, then SLAs and weights."""
    lines = [f"routing policy version {policy.version}: {len(policy.rules)} rules, first match wins", ""]
    lines += [_describe_rule(number, rule) + "\n" for number, rule in enumerate(policy.rules, start=1)]
    lines.append("risk      accept    resolve   weight")
    for risk in reversed(RISK_LEVELS):
        sla = policy.sla[risk]
        accept, resolve = format_iso_duration(sla.accept), format_iso_duration(sla.resolve)
        lines.append(f"{risk:<9} {accept:<9} {resolve:<9} {policy.load_weight[risk]}")
    lines.append("")
    lines.append(
        f"offers per tier: {policy.offers_per_tier}; lateral help between sibling stations: "
        f"{'yes' if policy.lateral else 'no'}"
    )
    return "\n".join(lines)
