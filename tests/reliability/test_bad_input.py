"""Bad input at the HTTP edge, on the real stack: oversized bodies, wrong content types, deeply
nested JSON, unicode edge cases, invalid id numbers and future timestamps each get a 4xx in the
contract's error shape naming the field or the problem, and leave nothing behind: no case row, no
idempotency key, no message on any topic."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.referral import id_number_check_char
from schemas.topics import TOPIC_PARTITIONS
from services.intake.domain import MAX_JSON_DEPTH, MAX_REFERRAL_BYTES
from services.shared.kafka import log_ends
from tests.integration.conftest import Stack
from tests.support.api_client import ROOM_WORKER, Tokens, assert_error, referral

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(120)]

ID_17 = "36040219460315002"  # a 濂溪区 code and a birth date of 1946-03-15
VALID_ID = ID_17 + id_number_check_char(ID_17)
WRONG_CHECK = ID_17 + next(c for c in "0123456789X" if c != VALID_ID[-1])
IN_AN_HOUR = (datetime.now(UTC) + timedelta(hours=1)).isoformat()


def resident(**fields: Any) -> dict[str, Any]:
    return {"resident": {"name": "陈桂英", "birth_year": 1946, "address": "十里社区5栋"} | fields}


class Snapshot:
    """What a request could have left behind: rows in intake's tables and messages on every topic."""

    def __init__(self, stack: Stack, kafka: AIOKafkaConsumer) -> None:
        self._stack, self._kafka = stack, kafka

    async def take(self) -> dict[str, Any]:
        counts = await self._stack.sql(
            "SELECT (SELECT count(*) FROM intake.cases) AS cases,"
            " (SELECT count(*) FROM intake.submission_keys) AS keys,"
            " (SELECT count(*) FROM shared.outbox) AS outbox"
        )
        partitions = [TopicPartition(t, p) for t, n in TOPIC_PARTITIONS.items() for p in range(n)]
        self._kafka.assign(partitions)
        ends = await log_ends(self._kafka, partitions)
        topics: dict[str, int] = {}
        for tp, end in ends.items():
            topics[tp.topic] = topics.get(tp.topic, 0) + end
        return dict(counts[0]) | topics


@pytest_asyncio.fixture(scope="module")
async def snapshot(stack: Stack) -> AsyncIterator[Snapshot]:
    kafka = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await kafka.start()
    try:
        yield Snapshot(stack, kafka)
    finally:
        await kafka.stop()


@pytest.fixture(scope="module")
def worker_token(stack: Stack) -> str:
    return Tokens(stack)[ROOM_WORKER]


@pytest_asyncio.fixture
async def client(stack: Stack, worker_token: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {worker_token}"}
    async with httpx.AsyncClient(base_url=stack.http, headers=headers, trust_env=False, timeout=30) as http:
        yield http


async def refused_and_nothing_stored(
    snapshot: Snapshot, send: Any, status: int, code: str, field: str | None, problem: str
) -> dict[str, Any]:
    """Send the request; the answer is `status` naming `field` (or `problem` in the message), and
    nothing was stored or published."""
    before = await snapshot.take()
    answer = await send()
    error = assert_error(answer, status, code)
    if field is not None:
        assert field in {f["field"] for f in error["fields"]}, error
    assert problem.lower() in error["message"].lower(), error
    assert await snapshot.take() == before
    return error


JSON_CASES = {
    "nul-in-name": (resident(name="陈\x00桂英"), "resident.name", "nul"),
    "lone-surrogate-in-name": (resident(name="陈\ud800英"), "resident.name", "unicode"),
    "lone-surrogate-in-summary": ({"summary": "需要上门\udfff探访"}, "summary", "unicode"),
    "rtl-override-in-name": (resident(name="\u202e英桂陈"), "resident.name", "letters"),
    "zero-width-joiner-in-name": (resident(name="陈\u200d桂英"), "resident.name", "letters"),
    "emoji-in-name": (resident(name="陈桂英😀"), "resident.name", "letters"),
    "control-character-in-address": (resident(address="十里社区\x1b[31m5栋"), "resident.address", "control"),
    "id-number-checksum": (resident(id_number=WRONG_CHECK), "resident.id_number", "check digit"),
    "id-number-17-digits": (resident(id_number=ID_17), "resident.id_number", "18 characters"),
    "id-number-letters": (resident(id_number=ID_17[:-1] + "AX"), "resident.id_number", "17 digits"),
    "id-number-born-tomorrow": (
        resident(
            id_number=(lambda s: s + id_number_check_char(s))(
                "360402" + (datetime.now(UTC) + timedelta(days=2)).strftime("%Y%m%d") + "002"
            )
        ),
        "resident.id_number",
        "future",
    ),  # fmt: skip
    "future-occurred-at": ({"occurred_at": IN_AN_HOUR}, "occurred_at", "future"),
    "future-birth-year": (resident(birth_year=datetime.now(UTC).year + 1), "resident.birth_year", "birth year"),
    "naive-timestamp": ({"occurred_at": "2024-05-01T10:00:00"}, "occurred_at", "timezone"),
    "summary-too-long": ({"summary": "长" * 2001}, "summary", "2000"),
}


@pytest.mark.parametrize(("overrides", "field", "problem"), list(JSON_CASES.values()), ids=list(JSON_CASES))
async def test_an_invalid_referral_is_refused_naming_its_field_and_nothing_is_stored(
    snapshot: Snapshot, client: httpx.AsyncClient, overrides: dict[str, Any], field: str, problem: str
) -> None:
    # ensure_ascii keeps lone surrogates as \\udXXX escapes, the only way JSON can carry them.
    body = json.dumps(referral(**overrides), ensure_ascii=True).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"bad-{field}-{problem}"}
    await refused_and_nothing_stored(
        snapshot, lambda: client.post("/v1/referrals", content=body, headers=headers), 422, "validation_failed",
        field, problem,
    )  # fmt: skip


async def test_a_body_over_the_size_limit_is_refused_with_413_before_it_is_read(
    snapshot: Snapshot, client: httpx.AsyncClient
) -> None:
    body = json.dumps(referral(summary="长" * (MAX_REFERRAL_BYTES // 2))).encode()
    assert len(body) > MAX_REFERRAL_BYTES
    send = lambda: client.post("/v1/referrals", content=body, headers={"Content-Type": "application/json"})  # noqa: E731
    error = await refused_and_nothing_stored(snapshot, send, 413, "payload_too_large", None, "64 KiB")
    assert str(MAX_REFERRAL_BYTES) in error["message"] or "64 KiB" in error["message"]


async def test_a_streamed_body_over_the_size_limit_is_refused_with_413(
    snapshot: Snapshot, client: httpx.AsyncClient
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"summary": "'
        for _ in range(MAX_REFERRAL_BYTES // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    send = lambda: client.post("/v1/referrals", content=chunks(), headers={"Content-Type": "application/json"})  # noqa: E731
    await refused_and_nothing_stored(snapshot, send, 413, "payload_too_large", None, "64 KiB")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None],
    ids=["text", "form", "multipart", "xml", "missing"],
)
async def test_a_referral_that_is_not_json_is_refused_with_415(
    snapshot: Snapshot, client: httpx.AsyncClient, content_type: str | None
) -> None:
    body = json.dumps(referral()).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    client.headers.pop("Content-Type", None)
    send = lambda: client.post("/v1/referrals", content=body, headers=headers)  # noqa: E731
    await refused_and_nothing_stored(snapshot, send, 415, "unsupported_media_type", None, "application/json")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 30_000], ids=["just-over", "deep", "very-deep"])
async def test_deeply_nested_json_is_refused_naming_the_nesting(
    snapshot: Snapshot, client: httpx.AsyncClient, depth: int
) -> None:
    inner = b'{"a": ' * depth + b'"\xe6\xb7\xb1 [{"' + b"}" * depth  # brackets in a string do not count
    body = b'{"summary": ' + inner + b"}" if depth < 30_000 else b"[" * depth + b"]" * depth
    assert len(body) <= MAX_REFERRAL_BYTES
    send = lambda: client.post("/v1/referrals", content=body, headers={"Content-Type": "application/json"})  # noqa: E731
    await refused_and_nothing_stored(snapshot, send, 422, "validation_failed", "$", "nested")


async def test_malformed_json_is_refused_naming_the_body(snapshot: Snapshot, client: httpx.AsyncClient) -> None:
    send = lambda: client.post("/v1/referrals", content=b'{"room_id": ', headers={"Content-Type": "application/json"})  # noqa: E731
    await refused_and_nothing_stored(snapshot, send, 422, "validation_failed", None, "json")


async def test_names_in_any_script_with_rare_four_byte_characters_are_accepted(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """The control: the edge refuses the problems above, not people's names. 𠮷 is outside the BMP
    (4 bytes in UTF-8), as many rare characters in Chinese names are; Uyghur names use · and Arabic script."""
    for n, name in enumerate(("𠮷野𡈽", "阿依古丽·买买提", "ئايگۈل", "O'Brien-Smith")):
        body = referral(**resident(name=name, id_number=VALID_ID), risk_level="low")
        answer = await client.post("/v1/referrals", json=body, headers={"Idempotency-Key": f"names-{n}"})
        assert answer.status_code == 202, answer.text
        rows = await stack.sql("SELECT resident->>'name' AS name FROM intake.cases WHERE case_id = $1",
                               answer.json()["case_id"])  # fmt: skip
        assert rows[0]["name"] == name
