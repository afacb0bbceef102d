"""schemas/asyncapi.yaml is the generated AsyncAPI 3.0 document of every topic: committed, in step
with the code, and whole (every topic, every event type, every reference resolves)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.asyncapi import ASYNCAPI_PATH, asyncapi_drifted, build_document, channel_id, message_name, render_yaml
from schemas.events import EVENT_CLASSES, event_name, event_type, new_event
from schemas.topics import CASE_COMMAND_RESULTS, CASE_COMMANDS, CASE_EVENTS, CONSUMED_TOPICS, TOPIC_PARTITIONS, dlq

EXAMPLE_CONSUMER = Path(__file__).parents[2] / "docs" / "example_consumer.py"
REGENERATE = "run `python -m schemas.export` and commit schemas/asyncapi.yaml"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are expected, got {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve (no {part!r})"
        node = node[part]
    return node


def _channel_of_topic(document: dict[str, Any], topic: str) -> dict[str, Any]:
    matches = [channel for channel in document["channels"].values() if channel["address"] == topic]
    assert len(matches) == 1, f"expected one channel for {topic}, found {len(matches)}"
    return matches[0]


def test_committed_asyncapi_document_matches_the_code() -> None:
    assert ASYNCAPI_PATH.is_file(), f"schemas/asyncapi.yaml is missing; {REGENERATE}"
    assert not asyncapi_drifted(), f"schemas/asyncapi.yaml is out of date with the models; {REGENERATE}"


def test_generation_is_deterministic() -> None:
    assert render_yaml() == render_yaml()


def test_committed_yaml_parses_back_to_the_generated_document(document: dict[str, Any]) -> None:
    assert yaml.safe_load(ASYNCAPI_PATH.read_text(encoding="utf-8")) == document


def test_document_has_the_asyncapi_3_top_level_structure(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= document["info"].keys()
    assert document["servers"]["production"]["protocol"] == "kafka"
    assert {"channels", "operations", "components"} <= document.keys()
    for cid, channel in document["channels"].items():
        assert channel["messages"], f"channel {cid} has no messages"
        for mid, message in channel["messages"].items():
            assert "payload" in message, f"{cid}/{mid} has no payload"
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
            assert message["bindings"]["kafka"]["key"]["description"], f"{cid}/{mid}: say what the key is"
    for oid, operation in document["operations"].items():
        assert operation["action"] in {"send", "receive"}, oid
        assert operation["messages"], f"operation {oid} names no messages"


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = set(_refs(document))
    assert refs, "expected $refs into components and channels"
    for ref in sorted(refs):
        _resolve(document, ref)
    assert not any(ref.startswith("#/$defs/") for ref in refs), "pydantic $defs must be moved into components"


def test_every_component_schema_is_used(document: dict[str, Any]) -> None:
    used = {ref.removeprefix("#/components/schemas/") for ref in _refs(document)}
    assert set(document["components"]["schemas"]) <= used


def test_operations_reference_their_own_channels_messages(document: dict[str, Any]) -> None:
    for oid, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), oid
        _resolve(document, channel_ref)
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (
                f"operation {oid} names {message['$ref']}, which is not a message of its channel {channel_ref}"
            )


@pytest.mark.parametrize("topic", sorted(TOPIC_PARTITIONS))
def test_every_topic_has_a_channel_with_its_partition_count(document: dict[str, Any], topic: str) -> None:
    channel = _channel_of_topic(document, topic)
    assert document["channels"][channel_id(topic)] is channel
    assert channel["bindings"]["kafka"]["topic"] == topic
    assert channel["bindings"]["kafka"]["partitions"] == TOPIC_PARTITIONS[topic]


def test_no_channel_for_a_topic_that_does_not_exist(document: dict[str, Any]) -> None:
    assert {channel["address"] for channel in document["channels"].values()} == set(TOPIC_PARTITIONS)


@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_every_case_event_type_has_a_message(document: dict[str, Any], name: str) -> None:
    messages = _channel_of_topic(document, CASE_EVENTS)["messages"]
    message = messages[message_name(name)]
    assert message["name"] == f"case.{name}.v1"
    assert message["contentType"] == "application/json"
    assert message["headers"]["properties"]["ce_type"]["const"] == event_type(name)
    assert set(message["headers"]["required"]) == {"ce_type", "ce_id"}
    payload = _resolve(document, message["payload"]["$ref"])
    assert payload["properties"]["type"]["const"] == event_type(name)
    assert set(_resolve(document, payload["properties"]["data"]["$ref"])["required"]) >= {"case_id", "sequence"}


def test_case_events_carry_only_the_known_event_types(document: dict[str, Any]) -> None:
    messages = _channel_of_topic(document, CASE_EVENTS)["messages"]
    assert set(messages) == {message_name(name) for name in EVENT_CLASSES}


@pytest.mark.parametrize("source", CONSUMED_TOPICS)
def test_dead_letter_topics_carry_the_original_message_and_why(document: dict[str, Any], source: str) -> None:
    (message,) = _channel_of_topic(document, dlq(source))["messages"].values()
    assert set(message["headers"]["required"]) == {"x-error", "x-origin", "x-consumer"}
    assert source in message["payload"]["description"]


@pytest.mark.parametrize("topic", [CASE_COMMANDS, CASE_COMMAND_RESULTS])
def test_internal_topics_are_marked_internal(document: dict[str, Any], topic: str) -> None:
    channel = _channel_of_topic(document, topic)
    assert {"name": "internal"} in channel["tags"]
    assert channel["description"].startswith("Internal")


def test_operations_say_what_caselink_publishes_and_consumes(document: dict[str, Any]) -> None:
    def topics(action: str) -> set[str]:
        return {
            _resolve(document, op["channel"]["$ref"])["address"]
            for op in document["operations"].values()
            if op["action"] == action
        }

    assert topics("receive") == set(CONSUMED_TOPICS)
    public_sent = {"caselink.referrals.rejected", CASE_EVENTS, CASE_COMMAND_RESULTS}
    assert public_sent | {dlq(topic) for topic in CONSUMED_TOPICS} <= topics("send")
    assert "caselink.referrals.submitted" not in topics("send"), "village-room systems publish submissions"


def load_example_consumer() -> Any:
    """docs/example_consumer.py as a module, as its readers run it."""
    spec = importlib.util.spec_from_file_location("example_consumer", EXAMPLE_CONSUMER)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_the_documented_example_consumer_handles_real_events(capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example_consumer()
    common = {
        "case_id": "c-1",
        "tier": "county",
        "station_id": "C-1",
        "category": "elderly_care",
        "risk_level": "high",
        "resident_ref": "r_x",
        "sequence": 2,
    }
    samples = {
        "assigned": {
            "status": "offered",
            "worker_id": "w-1",
            "accept_by": "2025-01-01T00:00:00Z",
            "candidates_considered": 1,
            "score": 1.0,
        },
        "escalated": {"status": "escalated", "from_tier": "township", "from_station_id": "T-1", "reason": "manual"},
    }
    assert example.HANDLERS, "the example dispatches on some event types"
    for type_, handler in example.HANDLERS.items():
        name = event_name(type_)  # a real v1 type
        event = new_event(name, source="caselink/router", data={**common, **samples[name]})
        handler(event.model_dump(mode="json")["data"])
        assert "c-1" in capsys.readouterr().out


@pytest.mark.parametrize("value", [None, b"", b"not json", b"[]", b"null", b'{"type": "caselink.case.assigned.v1"}'])
def test_the_documented_example_consumer_skips_what_is_not_a_case_event(
    value: bytes | None, capsys: pytest.CaptureFixture[str]
) -> None:
    example = load_example_consumer()
    example.handle(value)  # no exception: the consumer commits and goes on
    assert "skipped" in capsys.readouterr().out
