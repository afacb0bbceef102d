"""Acceptance of the walking skeleton, from outside: HTTP and Kafka submissions flow
received → routed → assigned → notified on caselink.case.events, gap-free and without personal data."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import REFERRALS_SUBMITTED
from services.intake.api import CaseView
from services.notifier.channels import verify_signature
from services.shared.consuming import record_id
from services.shared.demo import demo_secret
from tests.integration.conftest import CaseEvents, Stack, TopicLog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOM = "V-360402101001"  # 十里社区社工室, under 十里街道 T-360402101
WORKER = "w-0031"  # the demo worker of that room
RESIDENT = {
    "name": "王秀英",
    "id_number": "11010519491231002X",
    "phone": "13800138000",
    "birth_year": 1949,
    "gender": "female",
    "address": "十里社区3栋2单元401",
}
PERSONAL = ["王秀英", "11010519491231002X", "13800138000", "十里社区3栋2单元401"]


def referral(**overrides: Any) -> dict[str, Any]:
    body = {
        "room_id": ROOM,
        "category": "elderly_care",
        "risk_level": "medium",
        "summary": "独居老人，近一周未出门，邻居反映家中无人应门",
        "resident": RESIDENT,
        "consent": {"given": True, "scope": "service", "recorded_by": WORKER},
    }
    return body | overrides


@pytest.fixture(scope="session")
def worker_token(stack: Stack) -> str:
    return stack.cli("token", "create", "--user", WORKER)


@pytest.fixture(scope="session")
def supervisor_token(stack: Stack) -> str:
    return stack.cli("token", "create", "--user", "s-0002")


async def submit(stack: Stack, token: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} | ({"Idempotency-Key": key} if key else {})
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False) as client:
        return await client.post("/v1/referrals", json=body, headers=headers)


def assert_gap_free_flow(events: list[dict[str, Any]], *names: str) -> None:
    ordered = sorted(events, key=lambda e: e["data"]["sequence"])
    assert [e["data"]["sequence"] for e in ordered] == list(range(1, len(ordered) + 1))
    types = [e["type"].removeprefix("caselink.case.").removesuffix(".v1") for e in ordered]
    assert types[: len(names)] == list(names), types
    for event in ordered:
        assert event["specversion"] == "1.0" and event["subject"] == event["data"]["case_id"]
        assert event["datacontenttype"] == "application/json"
    assert len({e["id"] for e in ordered}) == len(ordered)


def assert_no_personal_data(raw: str) -> None:
    for value in PERSONAL:
        assert value not in raw


async def test_http_referral_is_routed_assigned_and_pushed_to_the_worker(
    stack: Stack, case_events: CaseEvents, worker_token: str
) -> None:
    answer = await submit(stack, worker_token, referral(), key=f"http-{uuid.uuid4()}")
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "received"
    case_id = answer.json()["case_id"]

    events = await case_events.wait_for_types(case_id, "received", "routed", "assigned", "notified")
    assert_gap_free_flow(events, "received", "routed", "assigned", "notified")
    assigned = next(e for e in events if e["type"] == "caselink.case.assigned.v1")["data"]
    assert assigned["tier"] == "township" and assigned["station_id"] == "T-360402101"
    assert assigned["status"] == "offered" and assigned["candidates_considered"] >= 1
    routed = next(e for e in events if e["type"] == "caselink.case.routed.v1")["data"]
    assert routed["rule"] == "default"
    assert_no_personal_data(json.dumps(events, ensure_ascii=False))

    worker = assigned["worker_id"]
    pushes = [r for r in stack.receiver.requests if r.path == f"/{worker}" and case_id.encode() in r.body]
    assert len(pushes) == 1
    push = pushes[0]
    assert verify_signature(push.body, demo_secret(worker), push.headers["x-caselink-signature"])
    assert json.loads(push.body)["purpose"] == "task"
    assert_no_personal_data(push.body.decode())


async def test_kafka_referral_flows_the_same_way(stack: Stack, case_events: CaseEvents, producer: Any) -> None:
    submission_id = str(uuid.uuid4())
    message = referral(submission_id=submission_id, submitted_by=WORKER, risk_level="low")
    await producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(message).encode(), key=ROOM.encode())

    case_id = await _case_of_submission(stack, case_events, submission_id)
    events = await case_events.wait_for_types(case_id, "received", "routed", "assigned", "notified")
    assert_gap_free_flow(events, "received", "routed", "assigned", "notified")
    routed = next(e for e in events if e["type"] == "caselink.case.routed.v1")["data"]
    # Low risk stays in the village room (rule routine-in-village), with the room's own worker.
    assert routed["rule"] == "routine-in-village" and routed["tier"] == "village"
    assert_no_personal_data(json.dumps(events, ensure_ascii=False))


async def test_a_submission_at_an_offset_handled_before_the_topic_was_created_again_is_still_accepted(
    stack: Stack, case_events: CaseEvents, producer: Any
) -> None:
    """A topic deleted and created again (or an in-memory broker restarted beside a kept database)
    numbers its records from 0 again: the inbox must not take a new submission for the one it
    handled at that offset before."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        numbers = await producer.partitions_for(REFERRALS_SUBMITTED)
        ends = await consumer.end_offsets([TopicPartition(REFERRALS_SUBMITTED, p) for p in numbers])
    finally:
        await consumer.stop()
    earlier = int(time.time() * 1000) - 86_400_000  # what the earlier incarnation stored there, a day ago
    claims = [
        f"submission:{record_id(SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o, timestamp=earlier))}"
        for tp, end in ends.items()
        for o in range(end, end + 3)
    ]
    await stack.sql(
        "INSERT INTO shared.inbox (consumer, message_id) SELECT 'intake.submissions', unnest($1::text[])", claims
    )

    submission_id = str(uuid.uuid4())
    message = referral(submission_id=submission_id, submitted_by=WORKER, risk_level="low")
    await producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(message).encode(), key=ROOM.encode())
    case_id = await _case_of_submission(stack, case_events, submission_id)
    await case_events.wait_for_types(case_id, "received", "routed", "assigned")


async def test_repeated_idempotency_key_returns_the_same_case_and_creates_nothing(
    stack: Stack, case_events: CaseEvents, worker_token: str, producer: Any
) -> None:
    key = f"again-{uuid.uuid4()}"
    first = await submit(stack, worker_token, referral(), key=key)
    second = await submit(stack, worker_token, referral(), key=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["case_id"] == second.json()["case_id"]

    submission_id = str(uuid.uuid4())
    message = json.dumps(referral(submission_id=submission_id, submitted_by=WORKER)).encode()
    for _ in range(2):
        await producer.send_and_wait(REFERRALS_SUBMITTED, message, key=ROOM.encode())
    kafka_case = await _case_of_submission(stack, case_events, submission_id)

    for case_id in (first.json()["case_id"], kafka_case):
        await case_events.wait_for_types(case_id, "notified")
        rows = await stack.sql("SELECT count(*) AS n FROM intake.cases WHERE case_id = $1", case_id)
        assert rows[0]["n"] == 1
        received = [e for e in case_events.of(case_id) if e["type"] == "caselink.case.received.v1"]
        assert len(received) == 1


async def test_an_idempotency_key_sent_again_with_a_different_referral_is_refused_not_swallowed(
    stack: Stack, case_events: CaseEvents, rejections: TopicLog, worker_token: str, producer: Any
) -> None:
    key = f"reused-{uuid.uuid4()}"
    first = await submit(stack, worker_token, referral(), key=key)
    reordered = dict(reversed(list(referral().items())))  # the same referral, its fields in another order
    assert (await submit(stack, worker_token, reordered, key=key)).json()["case_id"] == first.json()["case_id"]
    named = referral(submitted_by=WORKER)  # the same again: intake fills in the caller when it is left out
    assert (await submit(stack, worker_token, named, key=key)).json()["case_id"] == first.json()["case_id"]
    other = await submit(stack, worker_token, referral(category="mental_health", summary="另一位居民"), key=key)
    assert other.status_code == 422, other.text
    assert [f["field"] for f in other.json()["error"]["fields"]] == ["Idempotency-Key"]
    assert "different referral" in other.json()["error"]["message"]

    submission_id = str(uuid.uuid4())
    original = referral(submission_id=submission_id, submitted_by=WORKER)
    await producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(original).encode(), key=ROOM.encode())
    await _case_of_submission(stack, case_events, submission_id)
    changed = original | {"summary": "同一编号，另一份转介"}
    sentinel_id = str(uuid.uuid4())  # behind the burst on the same partition: read after it
    sentinel = referral(submission_id=sentinel_id, submitted_by=WORKER)
    for message in (changed, original, original, sentinel):  # one burst: only the changed one is refused
        await producer.send(REFERRALS_SUBMITTED, json.dumps(message).encode(), key=ROOM.encode())
    await producer.flush()
    await _case_of_submission(stack, case_events, sentinel_id)
    records = await rejections.wait_for(
        lambda records: any(json.loads(r.value)["submission_id"] == submission_id for r in records)
    )
    await asyncio.sleep(1.0)  # a rejection of the resends would have been published with that one
    (rejection,) = [json.loads(r.value) for r in records if json.loads(r.value)["submission_id"] == submission_id]
    assert [e["field"] for e in rejection["errors"]] == ["submission_id"]
    rows = await stack.sql("SELECT count(*) AS n FROM intake.submission_keys WHERE key = $1", submission_id)
    assert rows[0]["n"] == 1


async def test_concurrent_requests_with_one_idempotency_key_make_one_case(stack: Stack, worker_token: str) -> None:
    key = f"race-{uuid.uuid4()}"
    answers = await asyncio.gather(*(submit(stack, worker_token, referral(), key=key) for _ in range(8)))
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    assert len({a.json()["case_id"] for a in answers}) == 1
    rows = await stack.sql("SELECT count(*) AS n FROM intake.cases WHERE case_id = $1", answers[0].json()["case_id"])
    assert rows[0]["n"] == 1


async def test_a_referral_for_a_station_that_is_not_a_village_room_is_refused_and_nothing_is_written(
    stack: Stack,
) -> None:
    system = stack.cli("token", "create", "--user", "sys-portal")
    key = f"township-{uuid.uuid4()}"
    before = await stack.sql("SELECT count(*) AS cases FROM intake.cases")
    answer = await submit(stack, system, referral(room_id="T-360402101"), key=key)
    assert answer.status_code == 422, answer.text
    assert "room_id" in answer.text and "village rooms" in answer.text
    assert await stack.sql("SELECT 1 FROM intake.submission_keys WHERE key = $1", key) == []
    after = await stack.sql("SELECT count(*) AS cases FROM intake.cases")
    assert after[0]["cases"] == before[0]["cases"]


async def test_malformed_kafka_submissions_are_rejected_and_the_consumer_keeps_going(
    stack: Stack, case_events: CaseEvents, rejections: TopicLog, producer: Any
) -> None:
    missing_id = str(uuid.uuid4())
    await producer.send_and_wait(REFERRALS_SUBMITTED, b"{not json", key=ROOM.encode())
    await producer.send_and_wait(
        REFERRALS_SUBMITTED, json.dumps({"submission_id": missing_id, "room_id": ROOM}).encode(), key=ROOM.encode()
    )
    stranger_id = str(uuid.uuid4())
    stranger = referral(submission_id=stranger_id, submitted_by="w-0001")  # a city worker, not of this room
    await producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(stranger).encode(), key=ROOM.encode())
    nowhere_id = str(uuid.uuid4())
    nowhere = referral(submission_id=nowhere_id, submitted_by=WORKER) | {"room_id": "V-999999999999"}
    await producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(nowhere).encode(), key=b"V-999999999999")
    good_id = str(uuid.uuid4())
    await producer.send_and_wait(
        REFERRALS_SUBMITTED,
        json.dumps(referral(submission_id=good_id, submitted_by=WORKER)).encode(),
        key=ROOM.encode(),
    )

    def rejected(records: list[Any]) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in records]

    await rejections.wait_for(lambda records: any(r["submission_id"] == missing_id for r in rejected(records)))
    await rejections.wait_for(
        lambda records: any(r["submission_id"] is None and r["errors"][0]["field"] == "$" for r in rejected(records))
    )
    missing = next(r for r in rejected(rejections.records) if r["submission_id"] == missing_id)
    fields = {e["field"] for e in missing["errors"]}
    assert {"category", "risk_level", "summary", "resident", "consent", "submitted_by"} <= fields
    assert missing["received_at"]

    await rejections.wait_for(lambda records: any(r["submission_id"] == stranger_id for r in rejected(records)))
    refused = next(r for r in rejected(rejections.records) if r["submission_id"] == stranger_id)
    assert [e["field"] for e in refused["errors"]] == ["submitted_by"]
    assert await stack.sql("SELECT 1 FROM intake.submission_keys WHERE key = $1", stranger_id) == []
    # An unknown room is the room's fault, not the (real) submitter's.
    await rejections.wait_for(lambda records: any(r["submission_id"] == nowhere_id for r in rejected(records)))
    refused = next(r for r in rejected(rejections.records) if r["submission_id"] == nowhere_id)
    assert [e["field"] for e in refused["errors"]] == ["room_id"]

    # The partition kept flowing past every bad message.
    case_id = await _case_of_submission(stack, case_events, good_id)
    await case_events.wait_for_types(case_id, "received", "routed", "assigned")


async def test_worker_cannot_submit_for_another_room_and_bad_bodies_name_the_field(
    stack: Stack, worker_token: str
) -> None:
    other_room = await submit(stack, worker_token, referral(room_id="V-360402102001"))
    assert other_room.status_code == 403
    assert other_room.json()["error"]["code"] == "forbidden"

    bad = await submit(stack, worker_token, referral(category="gardening", consent={"given": False}))
    assert bad.status_code == 422
    fields = {f["field"] for f in bad.json()["error"]["fields"]}
    assert {"category", "consent.given"} <= fields

    async with httpx.AsyncClient(base_url=stack.http, trust_env=False) as client:
        anonymous = await client.post("/v1/referrals", json=referral())
    assert anonymous.status_code == 401


async def test_case_read_model_shows_status_and_timeline(
    stack: Stack, case_events: CaseEvents, worker_token: str, supervisor_token: str
) -> None:
    answer = await submit(stack, worker_token, referral(), key=f"read-{uuid.uuid4()}")
    case_id = answer.json()["case_id"]
    await case_events.wait_for_types(case_id, "notified")
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False) as client:
        for _ in range(50):
            case = (
                await client.get(f"/v1/cases/{case_id}", headers={"Authorization": f"Bearer {supervisor_token}"})
            ).json()
            if len(case["timeline"]) >= 4:
                break
            await _sleep(0.1)
    assert case["status"] == "offered" and case["assignee_id"]
    assert [e["data"]["sequence"] for e in case["timeline"]] == list(range(1, len(case["timeline"]) + 1))
    # Times are written as the events write them, so a client can compare them as strings.
    assigned = next(e["data"] for e in case["timeline"] if e["type"] == "caselink.case.assigned.v1")
    assert case["deadlines"]["accept_by"] == assigned["accept_by"] and assigned["accept_by"].endswith("Z")
    assert case["received_at"].endswith("Z") and case["deadlines"]["resolve_by"].endswith("Z")
    assert_no_personal_data(json.dumps(case, ensure_ascii=False))
    # What /openapi.json promises an integrator's generated client is what the route answers.
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False) as client:
        openapi = (await client.get("/openapi.json")).json()
    answer = openapi["paths"]["/v1/cases/{case_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert answer["schema"] == {"$ref": "#/components/schemas/CaseView"}
    described = openapi["components"]["schemas"]["CaseView"]
    assert set(case) == set(described["properties"]) == set(described["required"])
    CaseView.model_validate(case)


async def test_crisis_cases_go_lateral_then_up_the_tiers_as_capacity_runs_out_then_queue(
    stack: Stack, case_events: CaseEvents
) -> None:
    """Runs last: it fills every crisis worker of the demo county on purpose."""
    system = stack.cli("token", "create", "--user", "sys-portal")
    # 虞家河乡 (T-360402106) has no crisis_intervention worker; six sibling townships do, then the
    # county hub, then the city centre. Weight 3 per critical case fills them all in well under 40.
    body = referral(room_id="V-360402106001", category="family_support", risk_level="critical")
    case_ids = []
    for n in range(40):
        answer = await submit(stack, system, body, key=f"crisis-{uuid.uuid4()}-{n}")
        assert answer.status_code == 202, answer.text
        case_ids.append(answer.json()["case_id"])
    last = case_ids[-1]
    await case_events.wait_for_types(last, "queued", "notified", within=60)

    def outcome(case_id: str) -> list[str]:
        return [e["type"].split(".")[2] for e in sorted(case_events.of(case_id), key=lambda e: e["data"]["sequence"])]

    first = case_events.of(case_ids[0])
    assigned = next(e for e in first if e["type"] == "caselink.case.assigned.v1")["data"]
    assert "escalated" not in outcome(case_ids[0])
    assert assigned["tier"] == "township" and assigned["station_id"] != "T-360402106"  # lateral help

    queued = sorted(case_events.of(last), key=lambda e: e["data"]["sequence"])
    assert [e["type"].split(".")[2] for e in queued][:5] == ["received", "routed", "escalated", "escalated", "queued"]
    up = [e["data"] for e in queued if e["type"] == "caselink.case.escalated.v1"]
    assert [(s["from_tier"], s["tier"], s["reason"]) for s in up] == [
        ("township", "county", "no_capacity"),
        ("county", "city", "no_capacity"),
    ]
    assert queued[4]["data"]["waiting_at"] == "M-3604" and queued[4]["data"]["status"] == "queued"
    notified = [e["data"] for e in queued if e["type"] == "caselink.case.notified.v1"]
    assert notified and {n["purpose"] for n in notified} == {"escalation"}

    county_case = next(c for c in case_ids if outcome(c)[2:4] == ["escalated", "assigned"])
    county = next(e["data"] for e in case_events.of(county_case) if e["type"] == "caselink.case.assigned.v1")
    assert county["tier"] == "county" and county["station_id"] == "C-360402"
    await case_events.wait_for_types(county_case, "notified")
    for case_id in case_ids:
        assert_gap_free_flow(case_events.of(case_id), "received", "routed")
    # No worker was ever given more than their capacity.
    overfull = await stack.sql(
        "SELECT wl.worker_id FROM router.worker_load wl JOIN shared.users u ON u.id = wl.worker_id "
        "WHERE wl.load > u.capacity"
    )
    assert overfull == []


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def _case_of_submission(stack: Stack, case_events: CaseEvents, submission_id: str) -> str:
    async def lookup() -> str | None:
        rows = await stack.sql(
            "SELECT case_id FROM intake.submission_keys WHERE source = 'kafka' AND key = $1", submission_id
        )
        return rows[0]["case_id"] if rows else None

    for _ in range(300):
        if (case_id := await lookup()) is not None:
            return case_id
        await _sleep(0.1)
    raise AssertionError(f"submission {submission_id} never became a case")
