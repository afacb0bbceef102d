"""`caselink dlq replay`: a dead letter goes back to its origin topic after the fault is fixed,
is judged afresh there, and a second run does not replay it again. The plan (which letters, where
to, where the next run starts) is pure and tested without a broker first."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer, TopicPartition

import services.dlq
from schemas.topics import CASE_COMMAND_RESULTS, REFERRALS_SUBMITTED, dlq
from services.dlq import DeadLetter, dlq_topic_of, origin_of, plan_replays, read_dead_letters, resume_positions
from services.shared.embedded import TANSU_ENV
from services.shared.settings import Settings
from tests.integration.conftest import Stack, TopicLog
from tests.support.api_client import ROOM

pytestmark = [pytest.mark.reliability]
LATE_WORKER = "w-9001"  # not in the demo network until the "fix" loads it


def letter(partition: int, offset: int, origin: str | None, topic: str = "caselink.case.events.dlq") -> DeadLetter:
    headers = {"x-error": "boom"} | ({"x-origin": origin} if origin else {})
    return DeadLetter(topic, partition, offset, b"k", b"v", headers)


# ---------------------------------------------------------------- the plan (pure)


def test_the_dead_letter_topic_is_named_by_the_source_topic_or_itself() -> None:
    assert dlq_topic_of("caselink.case.events") == "caselink.case.events.dlq"
    assert dlq_topic_of("caselink.case.events.dlq") == "caselink.case.events.dlq"


def test_a_dead_letter_returns_to_the_topic_and_partition_of_its_origin() -> None:
    assert origin_of(letter(0, 5, "caselink.case.commands/7/42")) == ("caselink.case.commands", 7)


@pytest.mark.parametrize("origin", [None, "", "garbage", "caselink.case.commands/x/1", "/3/4"])
def test_a_dead_letter_without_a_usable_origin_returns_to_the_topic_its_name_names(origin: str | None) -> None:
    assert origin_of(letter(0, 5, origin, topic="caselink.case.commands.dlq")) == ("caselink.case.commands", None)


def test_each_origin_is_replayed_once_though_several_consumers_dead_lettered_it() -> None:
    same = "caselink.case.events/3/9"
    plan = plan_replays([letter(0, 0, same), letter(0, 1, same), letter(1, 0, "caselink.case.events/4/1")])
    assert [r.skip_reason is None for r in plan] == [True, False, True]
    assert [(r.topic, r.partition) for r in plan] == [("caselink.case.events", 3)] * 2 + [("caselink.case.events", 4)]


def test_a_partition_the_origin_topic_no_longer_has_is_left_to_the_key() -> None:
    assert plan_replays([letter(0, 0, "caselink.case.events/99/1")])[0].partition is None


def test_a_limit_stops_the_run_and_the_next_run_starts_at_the_first_letter_left() -> None:
    letters = [letter(0, 0, "t/0/0"), letter(0, 1, "t/0/1"), letter(2, 7, "t/2/7"), letter(2, 8, "t/2/8")]
    ends = {TopicPartition("caselink.case.events.dlq", p): 9 for p in range(4)}
    plan = plan_replays(letters, limit=3)
    assert len(plan) == 3
    positions = resume_positions(letters, len(plan), ends)
    assert positions == {TopicPartition("caselink.case.events.dlq", p): o for p, o in [(0, 9), (1, 9), (2, 8)]}
    assert resume_positions(letters, len(plan_replays(letters)), ends) == ends


class BrokenReadConsumer:
    """Starts, then fails on the first fetch, as a broker that goes away mid-read would."""

    instances: list[BrokenReadConsumer] = []

    def __init__(self, **_: Any) -> None:
        self.stopped = False
        BrokenReadConsumer.instances.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 3)

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        pass

    async def position(self, tp: TopicPartition) -> int:
        return 0

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        raise ConnectionError("the broker went away")


async def test_a_read_that_fails_after_the_consumer_started_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.dlq, "AIOKafkaConsumer", BrokenReadConsumer)
    settings = Settings(kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(ConnectionError):
        await read_dead_letters(settings, "127.0.0.1:1", "caselink.case.events.dlq", since_offset=None)
    assert [consumer.stopped for consumer in BrokenReadConsumer.instances] == [True]


# ---------------------------------------------------------------- on the stack


def replay(stack: Stack, *args: str) -> str:
    """`caselink dlq replay …` against the stack (whose broker, Tansu, refuses idempotent producers)."""
    env = (
        os.environ
        | {
            "CASELINK_DATABASE_URL": stack.database_url,
            "CASELINK_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        }
        | TANSU_ENV
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "dlq", "replay", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def headers_of(record: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in record.headers or ()}


def network_with_late_worker(stack: Stack, path: Path) -> Path:
    network = yaml.safe_load((stack.data_dir / "network.yaml").read_text(encoding="utf-8"))
    network["users"].append(
        {"id": LATE_WORKER, "name": "补录社工", "station": ROOM, "role": "worker", "specialties": ["elderly_care"],
         "certification": "none", "capacity": 1, "on_duty": False}
    )  # fmt: skip
    path.write_text(yaml.safe_dump(network, allow_unicode=True), encoding="utf-8")
    return path


async def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_a_referral_rejected_for_an_unknown_submitter_is_accepted_when_replayed_after_the_fix(
    stack: Stack, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    submission_id = str(uuid.uuid4())
    body = {
        "submission_id": submission_id, "room_id": ROOM, "submitted_by": LATE_WORKER, "category": "elderly_care",
        "risk_level": "low", "summary": "新入职社工的第一条转介", "resident": {"name": "补录居民", "birth_year": 1948},
        "consent": {"given": True, "scope": "service", "recorded_by": LATE_WORKER},
    }  # fmt: skip
    value = json.dumps(body, ensure_ascii=False).encode()
    sent = await producer.send_and_wait(REFERRALS_SUBMITTED, value, key=ROOM.encode())
    origin = f"{REFERRALS_SUBMITTED}/{sent.partition}/{sent.offset}"

    letters = TopicLog(stack.kafka_bootstrap, dlq(REFERRALS_SUBMITTED))
    source = TopicLog(stack.kafka_bootstrap, REFERRALS_SUBMITTED)
    await letters.start()
    await source.start()
    try:
        records = await letters.wait_for(lambda rs: any(headers_of(r).get("x-origin") == origin for r in rs))
        dead = next(r for r in records if headers_of(r).get("x-origin") == origin)
        assert "submitted_by" in headers_of(dead)["x-error"]
        where = f"{dead.topic}/{dead.partition}/{dead.offset}"

        async def accepted() -> bool:
            rows = await stack.sql("SELECT case_id FROM intake.submission_keys WHERE key = $1", submission_id)
            return bool(rows)

        assert not await accepted()

        # A dry run says what it would do and publishes nothing.
        assert where in replay(stack, REFERRALS_SUBMITTED, "--dry-run")
        await asyncio.sleep(1.0)
        assert not [r for r in source.records if headers_of(r).get("x-replayed-from") == where]

        # The fix: the worker joins the network. Then the replay re-feeds the referral.
        stack.cli("network", "load", str(network_with_late_worker(stack, tmp_path / "network.yaml")))
        first = replay(stack, dlq(REFERRALS_SUBMITTED))
        assert f"replay  {where} -> {REFERRALS_SUBMITTED}/{sent.partition}" in first, first
        await source.wait_for(lambda rs: any(headers_of(r).get("x-replayed-from") == where for r in rs))
        again = next(r for r in source.records if headers_of(r).get("x-replayed-from") == where)
        assert (again.key, again.value, again.partition) == (ROOM.encode(), value, sent.partition)
        await wait_until(accepted, 30, "the replayed referral to be accepted")
        case_id = (await stack.sql("SELECT case_id FROM intake.submission_keys WHERE key = $1", submission_id))[0][0]
        case = await stack.sql("SELECT submitted_by FROM intake.cases WHERE case_id = $1", case_id)
        assert case[0]["submitted_by"] == LATE_WORKER

        # A second run does not replay it again (the group's committed position moved past it).
        second = replay(stack, REFERRALS_SUBMITTED)
        assert where not in second, second
        await asyncio.sleep(1.0)
        assert len([r for r in source.records if headers_of(r).get("x-replayed-from") == where]) == 1
    finally:
        await letters.stop()
        await source.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_replayed_message_that_is_still_poison_is_dead_lettered_again_from_its_new_offset(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    garbage = f"not a command result {uuid.uuid4()}".encode()
    sent = await producer.send_and_wait(CASE_COMMAND_RESULTS, garbage, key=b"case-x")
    origin = f"{CASE_COMMAND_RESULTS}/{sent.partition}/{sent.offset}"
    letters = TopicLog(stack.kafka_bootstrap, dlq(CASE_COMMAND_RESULTS))
    await letters.start()
    try:
        records = await letters.wait_for(lambda rs: any(headers_of(r).get("x-origin") == origin for r in rs))
        dead = next(r for r in records if headers_of(r).get("x-origin") == origin)
        where = f"{dead.topic}/{dead.partition}/{dead.offset}"
        assert where in replay(stack, CASE_COMMAND_RESULTS)

        def again(rs: list[Any]) -> list[Any]:
            return [r for r in rs if r.value == garbage and headers_of(r).get("x-origin") != origin]

        await letters.wait_for(again)
        second = again(letters.records)[0]
        topic, partition, offset = headers_of(second)["x-origin"].rsplit("/", 2)
        assert (topic, int(partition)) == (CASE_COMMAND_RESULTS, sent.partition) and int(offset) > sent.offset
    finally:
        await letters.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_dead_letter_too_large_to_publish_again_is_skipped_and_the_letters_after_it_are_replayed(
    stack: Stack,
) -> None:
    # Larger than a producer sends by default (1 MiB): only an outside producer allowed more.
    big = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=False, max_request_size=4 * 1024 * 1024
    )
    await big.start()
    try:
        huge = b"x" * (1536 * 1024)
        small = f"not a command result {uuid.uuid4()}".encode()
        first = await big.send_and_wait(CASE_COMMAND_RESULTS, huge, key=b"case-big")
        second = await big.send_and_wait(CASE_COMMAND_RESULTS, small, key=b"case-big")  # same partition, after it
    finally:
        await big.stop()
    origins = {f"{CASE_COMMAND_RESULTS}/{sent.partition}/{sent.offset}" for sent in (first, second)}
    letters = TopicLog(stack.kafka_bootstrap, dlq(CASE_COMMAND_RESULTS))
    await letters.start()
    try:
        records = await letters.wait_for(lambda rs: origins <= {headers_of(r).get("x-origin") for r in rs})
        where = {
            headers_of(r)["x-origin"]: f"{r.topic}/{r.partition}/{r.offset}"
            for r in records
            if headers_of(r).get("x-origin") in origins
        }
        big_letter = where[f"{CASE_COMMAND_RESULTS}/{first.partition}/{first.offset}"]
        small_letter = where[f"{CASE_COMMAND_RESULTS}/{second.partition}/{second.offset}"]

        output = replay(stack, CASE_COMMAND_RESULTS)
        assert f"skip    {big_letter}" in output and "too large to publish again" in output, output
        assert f"replay  {small_letter}" in output, output
        # The run moved past both: the next one replays neither.
        again = replay(stack, CASE_COMMAND_RESULTS)
        assert big_letter not in again and small_letter not in again, again
    finally:
        await letters.stop()
