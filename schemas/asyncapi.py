"""The AsyncAPI 3.0 document of every caselink topic, generated from the models (CONTRACT §4).

`python -m schemas.export` writes it to schemas/asyncapi.yaml and `--check` fails when the
committed file no longer matches the code. Everything here is derived from schemas/: topic names
and partition counts from topics.py, payloads from the pydantic models (JSON Schema under
components.schemas), one message per case event type from events.EVENT_CLASSES.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from schemas.commands import CaseCommand, CommandResult
from schemas.events import EVENT_CLASSES, data_class, event_type
from schemas.referral import KafkaReferralSubmission, RejectedSubmission
from schemas.topics import (
    CASE_COMMAND_RESULTS,
    CASE_COMMANDS,
    CASE_EVENTS,
    CONSUMED_TOPICS,
    REFERRALS_REJECTED,
    REFERRALS_SUBMITTED,
    TOPIC_PARTITIONS,
    dlq,
)

ASYNCAPI_PATH = Path(__file__).parent / "asyncapi.yaml"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SCHEMA_REF = "#/components/schemas/{model}"
JSON = "application/json"

_HEADER = (
    "# The AsyncAPI 3.0 document of caselink's Kafka topics, generated from schemas/ by\n"
    "# `python -m schemas.export`. Do not edit: change the models and regenerate (a test fails on drift).\n"
)


@dataclass(frozen=True)
class _Topic:
    """What the document says about one topic besides its partition count."""

    title: str
    description: str
    key: str  # what the Kafka message key is
    tag: str = "public"  # public, internal (not a contract) or dead-letter
    sent_by: str | None = None  # which caselink services publish to it, if any
    received_by: str | None = None  # which caselink services consume it, if any


_TOPICS: dict[str, _Topic] = {
    REFERRALS_SUBMITTED: _Topic(
        title="Referral submissions",
        description=(
            "Village-room systems submit referrals here, one `KafkaReferralSubmission` per message. "
            "`submission_id` makes a submission idempotent: a repeat creates nothing. Submissions that "
            "cannot be accepted are answered on `caselink.referrals.rejected`."
        ),
        key="the room id (station id of the submitting village room)",
        received_by="intake (consumer group `caselink-intake`)",
    ),
    REFERRALS_REJECTED: _Topic(
        title="Rejected submissions",
        description=(
            "Why a Kafka submission could not be accepted: the submission id as received and one error "
            "per offending field. Errors name the field and never quote a resident's data (they may quote a station "
            "or user id, such as an unknown room)."
        ),
        key=(
            "the submission id as received; `topic/partition/offset` of the submission when it had none "
            "that could be read"
        ),
        sent_by="intake",
    ),
    CASE_EVENTS: _Topic(
        title="Case events",
        description=(
            "Every step of every case as a CloudEvents 1.0 structured-mode JSON message, the topic downstream "
            "systems subscribe to. Delivery is at least once: deduplicate by the CloudEvent `id`. Events of "
            "one case share its key (so its partition) and carry `sequence` 1, 2, 3 ... without gaps. "
            "Consumers must ignore unknown fields and unknown event types (see docs/downstream.md)."
        ),
        key="the case id (equal to the CloudEvent `subject` and `data.case_id`)",
        sent_by="intake (`received`), router (routing and lifecycle events), notifier (`notified`, "
        "`notification_failed`), through the transactional outbox",
        received_by="router, notifier and intake's case projection",
    ),
    CASE_COMMANDS: _Topic(
        title="Case commands (internal)",
        description=(
            "Internal to caselink, not a public contract: worker and supervisor actions that intake hands "
            "to the router. `command_id` makes a redelivered command a no-op."
        ),
        key="the case id",
        tag="internal",
        sent_by="intake (the HTTP action routes)",
        received_by="router (consumer group `caselink-router-commands`)",
    ),
    CASE_COMMAND_RESULTS: _Topic(
        title="Command results (internal)",
        description=(
            "Internal to caselink, not a public contract: the router's verdict on each command (`applied`, "
            "or `conflict` / `forbidden` / `not_found` / `invalid` with a message)."
        ),
        key="the case id",
        tag="internal",
        sent_by="router",
        received_by="intake (consumer group `caselink-intake-commands`)",
    ),
}

# The models each topic carries, and whether caselink reads them (validation view: what it
# accepts) or writes them (serialization view: defaulted fields always present).
_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (KafkaReferralSubmission, "validation"),
    (RejectedSubmission, "serialization"),
    *((event_class, "serialization") for event_class in EVENT_CLASSES.values()),
    (CaseCommand, "validation"),
    (CommandResult, "serialization"),
]


def channel_id(topic: str) -> str:
    """The channel id of a topic: `caselink.case.command-results.dlq` -> `caseCommandResultsDlq`."""
    words = topic.removeprefix("caselink.").replace("-", ".").split(".")
    return words[0] + "".join(word[:1].upper() + word[1:] for word in words[1:])


def message_name(name: str) -> str:
    """The message name of a case event: assigned -> case.assigned.v1."""
    return event_type(name).removeprefix("caselink.")


def _version() -> str:
    try:
        return metadata.version("caselink")
    except metadata.PackageNotFoundError:  # pragma: no cover - only when run from a bare checkout
        return "1"


def _key_binding(description: str) -> dict[str, Any]:
    return {"kafka": {"bindingVersion": KAFKA_BINDING_VERSION, "key": {"type": "string", "description": description}}}


def _channel(topic: str, spec: _Topic, messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": topic,
        "title": spec.title,
        "description": spec.description + f" Key: {spec.key}.",
        "messages": messages,
        "tags": [{"name": spec.tag}],
        "bindings": {
            "kafka": {"bindingVersion": KAFKA_BINDING_VERSION, "topic": topic, "partitions": TOPIC_PARTITIONS[topic]}
        },
    }


def _event_message(name: str, payload: dict[str, Any], key: str) -> dict[str, Any]:
    type_ = event_type(name)
    return {
        "name": message_name(name),
        "title": f"Case {name.replace('_', ' ')}",
        "summary": (data_class(name).__doc__ or "").strip(),
        "contentType": JSON,
        "headers": {
            "type": "object",
            "properties": {
                "ce_type": {"type": "string", "const": type_, "description": "the CloudEvent `type`"},
                "ce_id": {"type": "string", "format": "uuid", "description": "the CloudEvent `id`"},
            },
            "required": ["ce_type", "ce_id"],
        },
        "payload": payload,
        "bindings": _key_binding(key),
    }


def _plain_message(name: str, title: str, payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {"name": name, "title": title, "contentType": JSON, "payload": payload, "bindings": _key_binding(key)}


def _dead_letter_message(source: str) -> dict[str, Any]:
    return {
        "name": f"{source.removeprefix('caselink.')}.dead_letter",
        "title": f"Dead letter of {source}",
        "summary": (
            "A message of the source topic that failed for good or could not be decoded, byte for byte. The DLQ of "
            "caselink.referrals.submitted also keeps every rejected submission, with the resident's personal data "
            "it carried: restrict it as its source topic."
        ),
        "headers": {
            "type": "object",
            "properties": {
                "x-error": {"type": "string", "maxLength": 1000, "description": "why it failed (exception and text)"},
                "x-origin": {"type": "string", "description": "where it was read: `topic/partition/offset`"},
                "x-consumer": {"type": "string", "description": "the inbox name of the consumer that gave up"},
            },
            "required": ["x-error", "x-origin", "x-consumer"],
        },
        "payload": {
            "description": (
                f"The original message value, byte for byte: usually a message of `{source}`, but possibly "
                "the undecodable bytes that failed."
            )
        },
        "bindings": _key_binding(f"the original message's key ({_TOPICS[source].key})"),
    }


def _operation(action: str, channel: str, messages: dict[str, Any], summary: str, description: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "description": description,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message_id}"} for message_id in messages],
    }


def build_document() -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document of every caselink topic as plain data."""
    refs, definitions = models_json_schema(_MODELS, ref_template=SCHEMA_REF)
    schemas = dict(sorted(definitions.get("$defs", {}).items()))

    def payload(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    channel_messages: dict[str, dict[str, Any]] = {
        REFERRALS_SUBMITTED: {
            "referralSubmission": _plain_message(
                "referrals.submission",
                "Referral submission",
                payload(KafkaReferralSubmission, "validation"),
                _TOPICS[REFERRALS_SUBMITTED].key,
            )
        },
        REFERRALS_REJECTED: {
            "rejectedSubmission": _plain_message(
                "referrals.rejection",
                "Rejected submission",
                payload(RejectedSubmission, "serialization"),
                _TOPICS[REFERRALS_REJECTED].key,
            )
        },
        CASE_EVENTS: {
            message_name(name): _event_message(name, payload(event_class, "serialization"), _TOPICS[CASE_EVENTS].key)
            for name, event_class in EVENT_CLASSES.items()
        },
        CASE_COMMANDS: {
            "caseCommand": _plain_message(
                "case.command", "Case command", payload(CaseCommand, "validation"), _TOPICS[CASE_COMMANDS].key
            )
        },
        CASE_COMMAND_RESULTS: {
            "commandResult": _plain_message(
                "case.command-result",
                "Command result",
                payload(CommandResult, "serialization"),
                _TOPICS[CASE_COMMAND_RESULTS].key,
            )
        },
    }
    for source in CONSUMED_TOPICS:
        channel_messages[dlq(source)] = {"deadLetter": _dead_letter_message(source)}

    missing = set(TOPIC_PARTITIONS) ^ set(channel_messages)
    if missing:
        raise RuntimeError(f"topics without (or channels without) a topic: {sorted(missing)}")

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic in sorted(channel_messages):
        cid = channel_id(topic)
        messages = channel_messages[topic]
        if topic.endswith(".dlq"):
            source = topic.removesuffix(".dlq")
            spec = _Topic(
                title=f"Dead letters of {source}",
                description=(
                    f"Messages of `{source}` that a caselink consumer could not handle after its retries, or "
                    "could not decode, with the reason in headers. For operators: nothing consumes it."
                ),
                key=f"as on `{source}`",
                tag="dead-letter",
                sent_by="the consumer of the source topic that gave up",
            )
        else:
            spec = _TOPICS[topic]
        channels[cid] = _channel(topic, spec, messages)
        suffix = cid[:1].upper() + cid[1:]
        if spec.sent_by:
            operations[f"send{suffix}"] = _operation(
                "send", cid, messages, f"caselink publishes to {topic}", f"Published by {spec.sent_by}."
            )
        if spec.received_by:
            operations[f"receive{suffix}"] = _operation(
                "receive", cid, messages, f"caselink consumes {topic}", f"Consumed by {spec.received_by}."
            )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "caselink",
            "version": _version(),
            "description": (
                "Event-driven case referral and dispatch for tiered social-work station networks. "
                "The topics, keys and message formats below are caselink's public contract (CONTRACT §4); "
                "channels tagged `internal` are not. Evolution rules and an example consumer: "
                "docs/downstream.md. The same payloads as standalone JSON Schema files: schemas/json/."
            ),
        },
        "defaultContentType": JSON,
        "servers": {
            "production": {
                "host": "kafka:9092",
                "protocol": "kafka",
                "description": "Placeholder: your Kafka bootstrap servers (CASELINK_KAFKA_BOOTSTRAP).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas},
    }


class _NoAliasDumper(yaml.SafeDumper):
    """A YAML dumper that writes shared objects out in full instead of as anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(document: dict[str, Any] | None = None) -> str:
    """Return the AsyncAPI document as the YAML text committed in schemas/asyncapi.yaml."""
    body = yaml.dump(
        build_document() if document is None else document,
        Dumper=_NoAliasDumper,
        sort_keys=False,
        allow_unicode=True,
        width=120,
        default_flow_style=False,
    )
    return _HEADER + body


def asyncapi_drifted(path: Path = ASYNCAPI_PATH) -> bool:
    """Whether the committed document at `path` is missing or differs from the generated one."""
    return not path.is_file() or path.read_text(encoding="utf-8") != render_yaml()


def write_asyncapi(path: Path = ASYNCAPI_PATH) -> bool:
    """Write the document to `path` if it drifted; return whether it was written."""
    if not asyncapi_drifted(path):
        return False
    path.write_text(render_yaml(), encoding="utf-8")
    return True
