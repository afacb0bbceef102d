"""The inbox identity of records whose payload carries no id of its own (Kafka submissions, dead letters)."""

from __future__ import annotations

from types import SimpleNamespace

from services.shared.consuming import origin, record_id


def record(offset: int, timestamp: int) -> SimpleNamespace:
    return SimpleNamespace(topic="caselink.referrals.submitted", partition=3, offset=offset, timestamp=timestamp)


def test_a_redelivered_record_has_the_id_it_had() -> None:
    assert record_id(record(41, 1_790_000_000_123)) == record_id(record(41, 1_790_000_000_123))
    assert record_id(record(41, 1_790_000_000_123)) == "caselink.referrals.submitted/3/41@1790000000123"


def test_a_new_record_at_an_offset_seen_before_the_topic_was_created_again_is_a_new_message() -> None:
    before, after = record(0, 1_790_000_000_123), record(0, 1_790_000_555_000)
    assert origin(before) == origin(after)
    assert record_id(before) != record_id(after)
