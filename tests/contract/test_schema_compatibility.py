"""Schema evolution within v1 (docs/downstream.md): the current JSON Schemas must be a backward-compatible
extension of the frozen v1 baseline in tests/contract/baseline_v1/ (a copy of schemas/json/ as v1 shipped).

The drift test (test_schema_drift.py) keeps schemas/json/ equal to the models; this one keeps the models a
superset of the baseline. Within v1 only additive changes are allowed: new optional fields, new event
types, new enum values. Never remove or rename a field, never make an optional field required, never
narrow a type, an enum or a constraint. A message caselink *publishes* (events, rejections) also keeps
every field it always carried, with the same type: consumers rely on them. A breaking change ships as
a new `.v2` type alongside v1 instead.

Refresh the baseline (copy schemas/json/ into baseline_v1/) only to lock in additive changes after a
release, never to make a breaking change pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.events import EVENT_CLASSES
from schemas.export import render_all

BASELINE_DIR = Path(__file__).parent / "baseline_v1"
BASELINE_FILES = sorted(path.name for path in BASELINE_DIR.glob("*.json"))
# What caselink accepts from others (validation view). Every other file is a message caselink publishes.
INPUT_FILES = frozenset({"referral_submission.json", "kafka_referral_submission.json"})

_LOWER_BOUNDS = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
_UPPER_BOUNDS = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
_EXACT = ("pattern", "format", "multipleOf")


# --- the checker ----------------------------------------------------------------------------------


@dataclass
class _Comparison:
    baseline: dict[str, Any]
    current: dict[str, Any]
    published: bool
    problems: list[str] = field(default_factory=list)
    seen: set[tuple[int, int]] = field(default_factory=set)


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node or ("allOf" in node and len(node["allOf"]) == 1):
        if "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), f"only local references are supported: {ref}"
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        else:
            node = node["allOf"][0]
    return node


def _branches(root: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """The alternatives a value may take: a union flattened, references resolved."""
    node = _resolve(root, node)
    union = node.get("anyOf") or node.get("oneOf")
    if union is None:
        return [node]
    return [branch for option in union for branch in _branches(root, option)]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _types(branch: dict[str, Any]) -> set[str]:
    if "type" in branch:
        declared = branch["type"]
        return set(declared) if isinstance(declared, list) else {declared}
    if "const" in branch:
        return {_json_type(branch["const"])}
    if "enum" in branch:
        return {_json_type(value) for value in branch["enum"]}
    if "properties" in branch:
        return {"object"}
    return {"any"}


def _covers(types: set[str], wanted: str) -> bool:
    return wanted in types or "any" in types or (wanted == "integer" and "number" in types)


def _values(branches: list[dict[str, Any]]) -> set[str] | None:
    """The only values allowed besides null (enums and consts), or None when any value of the type goes."""
    values: set[str] = set()
    for branch in branches:
        if branch.get("type") == "null":
            continue
        if "const" in branch:
            values.add(json.dumps(branch["const"]))
        elif "enum" in branch:
            values.update(json.dumps(value) for value in branch["enum"])
        else:
            return None
    return values


def _of_type(branches: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [branch for branch in branches if type_ in _types(branch)]


def _compare(c: _Comparison, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
    old_branches, new_branches = _branches(c.baseline, old), _branches(c.current, new)
    key = (id(_resolve(c.baseline, old)), id(_resolve(c.current, new)))
    if key in c.seen:
        return
    c.seen.add(key)

    old_types = set().union(*(_types(b) for b in old_branches))
    new_types = set().union(*(_types(b) for b in new_branches))
    lost = sorted(t for t in old_types if not _covers(new_types, t))
    if lost:
        c.problems.append(f"{path}: type narrowed, no longer accepts {', '.join(lost)}")
    gained = sorted(t for t in new_types if not _covers(old_types, t))
    if c.published and gained:
        c.problems.append(f"{path}: published field may now be {', '.join(gained)}, which consumers do not expect")

    old_values, new_values = _values(old_branches), _values(new_branches)
    if old_values is None and new_values is not None:
        c.problems.append(f"{path}: now restricted to the values {', '.join(sorted(new_values))}")
    elif old_values is not None and new_values is not None and old_values - new_values:
        c.problems.append(f"{path}: enum value(s) removed: {', '.join(sorted(old_values - new_values))}")

    old_mapping = _resolve(c.baseline, old).get("discriminator", {}).get("mapping", {})
    new_mapping = _resolve(c.current, new).get("discriminator", {}).get("mapping", {})
    for tag in sorted(set(old_mapping) - set(new_mapping)):
        c.problems.append(f"{path}: variant {tag!r} removed")

    for type_ in ("string", "integer", "number", "array"):
        olds, news = _of_type(old_branches, type_), _of_type(new_branches, type_)
        if olds and news:
            _compare_constraints(c, olds[0], news[0], path)
            if type_ == "array" and "items" in olds[0] and "items" in news[0]:
                _compare(c, olds[0]["items"], news[0]["items"], f"{path}[]")

    _compare_objects(c, _of_type(old_branches, "object"), _of_type(new_branches, "object"), path)


def _compare_constraints(c: _Comparison, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
    for name in _LOWER_BOUNDS:
        if name in new and (name not in old or new[name] > old[name]):
            c.problems.append(f"{path}: {name} tightened from {old.get(name)} to {new[name]}")
    for name in _UPPER_BOUNDS:
        if name in new and (name not in old or new[name] < old[name]):
            c.problems.append(f"{path}: {name} tightened from {old.get(name)} to {new[name]}")
    for name in _EXACT:
        if name in new and new[name] != old.get(name):
            c.problems.append(f"{path}: {name} changed from {old.get(name)!r} to {new[name]!r}")


def _compare_objects(c: _Comparison, olds: list[dict[str, Any]], news: list[dict[str, Any]], path: str) -> None:
    if not olds or not news:
        return  # a lost object type was reported with the types
    by_title = {branch.get("title"): branch for branch in news}
    for old in olds:
        new = news[0] if len(olds) == len(news) == 1 else by_title.get(old.get("title"))
        if new is None:
            c.problems.append(f"{path}: variant {old.get('title')!r} removed")
            continue
        where = f"{path}<{old['title']}>" if len(olds) > 1 else path
        _compare_object(c, old, new, where)


def _compare_object(c: _Comparison, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    prefix = "" if path == "$" else f"{path}."
    for name in old_props:
        if name not in new_props:
            c.problems.append(f"{prefix}{name}: field removed (or renamed)")
            continue
        _compare(c, old_props[name], new_props[name], f"{prefix}{name}")
    for name in sorted(new_required - old_required):
        if name in old_props:
            c.problems.append(f"{prefix}{name}: optional field became required")
        elif not c.published:
            c.problems.append(f"{prefix}{name}: new field is required (senders built against v1 do not send it)")
    if c.published:
        for name in sorted(old_required - new_required):
            if name in new_props:
                c.problems.append(f"{prefix}{name}: published field is no longer always present")
    old_extra, new_extra = old.get("additionalProperties", True), new.get("additionalProperties", True)
    if old_extra is not False and new_extra is False:
        c.problems.append(f"{path}: unknown fields are now refused")
    elif isinstance(old_extra, dict) and isinstance(new_extra, dict):
        _compare(c, old_extra, new_extra, f"{path}{{}}")
    elif old_extra is True and isinstance(new_extra, dict):
        c.problems.append(f"{path}: additional fields are now constrained")


def compatibility_problems(baseline: dict[str, Any], current: dict[str, Any], *, published: bool) -> list[str]:
    """Why `current` is not a backward-compatible extension of `baseline` (empty when it is).

    `published`: the schema describes messages caselink writes and others read, so fields that were
    always present must stay so, with no new types; otherwise others write and caselink reads, so no
    new field may be required.
    """
    comparison = _Comparison(baseline, current, published)
    _compare(comparison, baseline, current, "$")
    return comparison.problems


# --- the committed schemas against the baseline --------------------------------------------------


@pytest.fixture(scope="module")
def current_schemas() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in render_all().items()}


def test_the_baseline_is_present() -> None:
    assert "case_event.json" in BASELINE_FILES and len(BASELINE_FILES) >= 20


def test_every_baseline_schema_file_is_still_exported(current_schemas: dict[str, dict[str, Any]]) -> None:
    missing = sorted(set(BASELINE_FILES) - set(current_schemas))
    assert not missing, f"schemas removed from the v1 contract: {missing}; ship a .v2 alongside instead"


def test_every_baseline_event_type_is_still_an_event_type() -> None:
    baseline_events = {name[len("case.") : -len(".v1.json")] for name in BASELINE_FILES if name.startswith("case.")}
    assert baseline_events <= set(EVENT_CLASSES), f"event types removed: {sorted(baseline_events - set(EVENT_CLASSES))}"


@pytest.mark.parametrize("name", BASELINE_FILES)
def test_current_schema_is_a_backward_compatible_extension_of_the_v1_baseline(
    name: str, current_schemas: dict[str, dict[str, Any]]
) -> None:
    if name not in current_schemas:
        pytest.fail(f"{name} is no longer exported")
    baseline = json.loads((BASELINE_DIR / name).read_text(encoding="utf-8"))
    problems = compatibility_problems(baseline, current_schemas[name], published=name not in INPUT_FILES)
    assert not problems, f"{name} breaks v1 compatibility:\n  " + "\n  ".join(problems)


# --- the checker on small hand-made schemas ------------------------------------------------------


def _schema(properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, **extra}


STR = {"type": "string"}
OPT_STR = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
COLOUR = {"$defs": {"Colour": {"enum": ["red", "green"], "type": "string"}}}
BASE = _schema({"id": STR, "note": OPT_STR}, ["id"])


@pytest.mark.parametrize("published", [False, True])
def test_checker_identical_schemas_are_compatible(published: bool) -> None:
    assert compatibility_problems(BASE, BASE, published=published) == []


@pytest.mark.parametrize("published", [False, True])
def test_checker_removing_a_field_breaks_compatibility(published: bool) -> None:
    current = _schema({"id": STR}, ["id"])
    assert compatibility_problems(BASE, current, published=published) == ["note: field removed (or renamed)"]


def test_checker_renaming_a_field_breaks_compatibility() -> None:
    current = _schema({"identifier": STR, "note": OPT_STR}, ["identifier"])
    assert "id: field removed (or renamed)" in compatibility_problems(BASE, current, published=True)


@pytest.mark.parametrize("published", [False, True])
def test_checker_adding_an_optional_field_is_compatible(published: bool) -> None:
    current = _schema({"id": STR, "note": OPT_STR, "extra": OPT_STR}, ["id"])
    assert compatibility_problems(BASE, current, published=published) == []


def test_checker_adding_a_required_field_to_an_input_breaks_compatibility() -> None:
    current = _schema({"id": STR, "note": OPT_STR, "extra": STR}, ["id", "extra"])
    assert compatibility_problems(BASE, current, published=False) == [
        "extra: new field is required (senders built against v1 do not send it)"
    ]


def test_checker_adding_an_always_present_field_to_a_published_message_is_compatible() -> None:
    # Consumers ignore fields they do not know, so a new field that is always sent is additive.
    current = _schema({"id": STR, "note": OPT_STR, "extra": OPT_STR}, ["id", "extra"])
    assert compatibility_problems(BASE, current, published=True) == []


@pytest.mark.parametrize("published", [False, True])
def test_checker_making_an_optional_field_required_breaks_compatibility(published: bool) -> None:
    current = _schema({"id": STR, "note": OPT_STR}, ["id", "note"])
    assert "note: optional field became required" in compatibility_problems(BASE, current, published=published)


def test_checker_a_published_field_may_not_stop_being_always_present() -> None:
    current = _schema({"id": STR, "note": OPT_STR}, [])
    assert compatibility_problems(BASE, current, published=True) == ["id: published field is no longer always present"]
    assert compatibility_problems(BASE, current, published=False) == []


@pytest.mark.parametrize("published", [False, True])
def test_checker_removing_an_enum_value_breaks_compatibility(published: bool) -> None:
    baseline = {**_schema({"colour": {"$ref": "#/$defs/Colour"}}, ["colour"]), **COLOUR}
    current = {**baseline, "$defs": {"Colour": {"enum": ["red"], "type": "string"}}}
    assert compatibility_problems(baseline, current, published=published) == ['colour: enum value(s) removed: "green"']


@pytest.mark.parametrize("published", [False, True])
def test_checker_adding_an_enum_value_is_compatible(published: bool) -> None:
    baseline = {**_schema({"colour": {"$ref": "#/$defs/Colour"}}, ["colour"]), **COLOUR}
    current = {**baseline, "$defs": {"Colour": {"enum": ["red", "green", "blue"], "type": "string"}}}
    assert compatibility_problems(baseline, current, published=published) == []


def test_checker_turning_free_text_into_an_enum_breaks_compatibility() -> None:
    current = _schema({"id": {"enum": ["a", "b"], "type": "string"}, "note": OPT_STR}, ["id"])
    assert compatibility_problems(BASE, current, published=False) == ['id: now restricted to the values "a", "b"']


@pytest.mark.parametrize("published", [False, True])
def test_checker_narrowing_a_type_breaks_compatibility(published: bool) -> None:
    current = _schema({"id": STR, "note": STR}, ["id"])
    assert "note: type narrowed, no longer accepts null" in compatibility_problems(BASE, current, published=published)


def test_checker_widening_a_type_is_compatible_for_inputs_only() -> None:
    current = _schema({"id": OPT_STR, "note": OPT_STR}, ["id"])
    assert compatibility_problems(BASE, current, published=False) == []
    assert compatibility_problems(BASE, current, published=True) == [
        "id: published field may now be null, which consumers do not expect"
    ]


@pytest.mark.parametrize("published", [False, True])
def test_checker_tightening_a_constraint_breaks_compatibility(published: bool) -> None:
    baseline = _schema({"summary": {"type": "string", "maxLength": 2000}}, ["summary"])
    current = _schema({"summary": {"type": "string", "maxLength": 1000, "format": "email"}}, ["summary"])
    assert compatibility_problems(baseline, current, published=published) == [
        "summary: maxLength tightened from 2000 to 1000",
        "summary: format changed from None to 'email'",
    ]


def test_checker_relaxing_a_constraint_is_compatible() -> None:
    baseline = _schema({"summary": {"type": "string", "maxLength": 2000, "minLength": 1}}, ["summary"])
    current = _schema({"summary": {"type": "string", "maxLength": 4000}}, ["summary"])
    assert compatibility_problems(baseline, current, published=False) == []


def test_checker_refusing_unknown_fields_breaks_compatibility() -> None:
    current = {**BASE, "additionalProperties": False}
    assert compatibility_problems(BASE, current, published=True) == ["$: unknown fields are now refused"]


def test_checker_follows_references_into_nested_objects() -> None:
    baseline = {
        **_schema({"data": {"$ref": "#/$defs/Data"}}, ["data"]),
        "$defs": {"Data": _schema({"case_id": STR, "worker_id": STR}, ["case_id", "worker_id"], title="Data")},
    }
    current = {**baseline, "$defs": {"Data": _schema({"case_id": STR}, ["case_id"], title="Data")}}
    assert compatibility_problems(baseline, current, published=True) == ["data.worker_id: field removed (or renamed)"]


def test_checker_checks_array_items() -> None:
    baseline = _schema({"errors": {"type": "array", "items": _schema({"field": STR}, ["field"])}}, ["errors"])
    current = _schema({"errors": {"type": "array", "items": _schema({}, [])}}, ["errors"])
    assert compatibility_problems(baseline, current, published=True) == ["errors[].field: field removed (or renamed)"]


def test_checker_removing_a_union_variant_breaks_compatibility() -> None:
    def union(*titles: str) -> dict[str, Any]:
        defs = {t: _schema({"type": {"const": t, "type": "string"}}, ["type"], title=t) for t in titles}
        return {
            "oneOf": [{"$ref": f"#/$defs/{t}"} for t in titles],
            "discriminator": {"propertyName": "type", "mapping": {t: f"#/$defs/{t}" for t in titles}},
            "$defs": defs,
        }

    assert compatibility_problems(union("a", "b"), union("a", "b", "c"), published=True) == []
    problems = compatibility_problems(union("a", "b"), union("a"), published=True)
    assert "$: variant 'b' removed" in problems
