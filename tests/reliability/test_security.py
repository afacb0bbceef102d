"""Security on the real stack: residents' personal data appears in no event, log or metric; bearer
tokens are stored only hashed; every read of a case is in the access log; a supervisor's live stream
stays inside their stations. And in the code: SQL is built only with bound parameters."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.referral import id_number_check_char
from schemas.topics import REFERRALS_SUBMITTED, TOPIC_PARTITIONS, dlq
from services.shared.demo import demo_network
from services.shared.directory import hash_token
from services.shared.kafka import log_ends
from tests.integration.conftest import Stack
from tests.support.api_client import (
    CITY_SUPERVISOR,
    ROOM,
    ROOM_WORKER,
    Api,
    EventStream,
    Tokens,
    assert_error,
    is_offered,
    referral,
)

pytestmark = [pytest.mark.reliability]
SERVICES = Path(__file__).resolve().parents[2] / "services"
DEMO = demo_network()

# Distinctive personal data: no other test, demo file or code path contains these strings.
ID_17 = "36040219370704731"
PII = {
    "name": "翟鹂鸾",
    "id_number": ID_17 + id_number_check_char(ID_17),
    "phone": "+86 139 0420 7731",
    "address": "濂溪区隐秘巷七十七号后院",
    "household_id": "HH-PII-44170",
}
PII_FORMS = {*PII.values(), "+8613904207731", "13904207731"}
# The topics where residents' data belongs: what village rooms send, and its dead letters.
INPUT_TOPICS = {REFERRALS_SUBMITTED, dlq(REFERRALS_SUBMITTED)}


def leaks(text: str) -> set[str]:
    """The PII strings in `text`, raw or as JSON escapes (a log renderer may escape non-ASCII)."""
    escaped = {json.dumps(s)[1:-1]: s for s in PII_FORMS} | {
        json.dumps(s, ensure_ascii=True)[1:-1]: s for s in PII_FORMS
    }
    return {original for form, original in escaped.items() if form in text}


async def every_message(bootstrap: str) -> AsyncIterator[tuple[str, bytes]]:
    """(where, bytes) of every key, value and header of every message on every caselink topic."""
    kafka = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await kafka.start()
    try:
        partitions = [TopicPartition(t, p) for t, n in TOPIC_PARTITIONS.items() for p in range(n)]
        kafka.assign(partitions)
        ends = await log_ends(kafka, partitions)
        wanted = [tp for tp in partitions if ends[tp] > 0]
        kafka.assign(wanted)
        await kafka.seek_to_beginning(*wanted)
        pending = set(wanted)
        while pending:
            for _, records in (await kafka.getmany(*pending, timeout_ms=1000)).items():
                for r in records:
                    where = f"{r.topic}/{r.partition}/{r.offset}"
                    yield where, (r.key or b"") + b"\n" + (r.value or b"")
                    for name, value in r.headers or ():
                        yield f"{where} header {name}", value
            pending = {tp for tp in pending if await kafka.position(tp) < ends[tp]}
    finally:
        await kafka.stop()


@pytest_asyncio.fixture(scope="module")
async def api(stack: Stack) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False, timeout=30.0) as client:
        api = Api(client, Tokens(stack))
        try:
            yield api
        finally:
            await api.close_opened()


@pytest.mark.integration
@pytest.mark.timeout(180)
async def test_no_personal_data_reaches_events_logs_or_metrics(
    stack: Stack, api: Api, producer: AIOKafkaProducer
) -> None:
    # Accepted over HTTP (worker and system user) and Kafka, and refused over HTTP and Kafka.
    accepted = [
        await api.submit(resident=PII | {"birth_year": 1937, "gender": "female"}, risk_level=risk)
        for risk in ("medium", "high")
    ]
    accepted.append(await api.submit(user="sys-portal", resident=PII, risk_level="critical",
                                     category="crisis_intervention"))  # fmt: skip
    kafka_id = str(uuid.uuid4())
    by_kafka = referral(resident=PII, submission_id=kafka_id, submitted_by=ROOM_WORKER)
    await producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(by_kafka).encode(), key=ROOM.encode())
    refused = referral(resident=PII | {"id_number": PII["id_number"][:-1] + "0", "phone": PII["phone"] + "x"})
    answer = await api.post("/v1/referrals", user=ROOM_WORKER, json=refused)
    assert not leaks(assert_error(answer, 422)["message"] + json.dumps(answer.json()))
    bad_kafka = referral(resident=PII | {"birth_year": 3000}, submission_id=str(uuid.uuid4()), submitted_by=ROOM_WORKER)
    await producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(bad_kafka).encode(), key=ROOM.encode())

    for case_id in accepted:
        await api.wait_for_case(case_id, lambda c: is_offered(c) or c["status"] == "queued", within=60)
    await api.wait_for_case(accepted[0], lambda c: "notified" in json.dumps(c["timeline"]), within=60)
    for _ in range(60):
        if await stack.sql("SELECT 1 FROM intake.submission_keys WHERE key = $1", kafka_id):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)  # let the relay publish the last events and the services log them

    found: dict[str, set[str]] = {}
    async for where, data in every_message(stack.kafka_bootstrap):
        if where.split("/", 1)[0] not in INPUT_TOPICS and (hit := leaks(data.decode(errors="replace"))):
            found[where] = hit
    logs = {path.name: path.read_text(encoding="utf-8", errors="replace") for path in stack.data_dir.rglob("*.log")}
    assert "intake.submission_rejected" in logs["dev.log"]  # the services' log, with this run in it
    for name, text in sorted(logs.items()):
        for number, line in enumerate(text.splitlines(), 1):
            if hit := leaks(line):
                found[f"{name}:{number}"] = hit
    metrics = (await api.client.get("/metrics")).text
    if hit := leaks(metrics):
        found["/metrics"] = hit
    assert not found, f"personal data found in {len(found)} places: " + "; ".join(
        f"{where}: {sorted(hit)}" for where, hit in list(found.items())[:10]
    )
    # The scan can see it: the database keeps the resident, and the input topic carries it.
    stored = await stack.sql("SELECT resident FROM intake.cases WHERE case_id = $1", accepted[0])
    assert leaks(json.dumps(json.loads(stored[0]["resident"]), ensure_ascii=False))


@pytest.mark.integration
async def test_bearer_tokens_are_stored_only_as_hashes(stack: Stack) -> None:
    token = stack.cli("token", "create", "--user", ROOM_WORKER)
    rows = await stack.sql("SELECT to_jsonb(t)::text AS row FROM shared.api_tokens t")
    assert any(hash_token(token) in r["row"] for r in rows)
    secret = token.removeprefix("clk_")
    assert not [r["row"] for r in rows if secret in r["row"] or secret[:16] in r["row"]]


@pytest.mark.integration
async def test_every_read_of_a_case_is_in_the_access_log_and_refused_reads_are_not(stack: Stack, api: Api) -> None:
    case = await api.open_case()
    readers = [CITY_SUPERVISOR, ROOM_WORKER, case["assignee_id"]]
    before = await stack.sql("SELECT now() AS t")
    for user in readers:
        assert (await api.get(f"/v1/cases/{case['case_id']}", user=user)).status_code == 200
    assert_error(await api.get(f"/v1/cases/{case['case_id']}", user="w-0032"), 404)  # another room's worker
    rows = await stack.sql(
        "SELECT user_id, route, at FROM intake.case_reads WHERE case_id = $1 AND at >= $2 ORDER BY id",
        case["case_id"], before[0]["t"],
    )  # fmt: skip
    assert [r["user_id"] for r in rows] == readers
    assert {r["route"] for r in rows} == {"GET /v1/cases/{case_id}"}


@pytest.mark.integration
async def test_a_supervisors_live_stream_shows_nothing_of_another_townships_cases(api: Api) -> None:
    township = "T-360402101"  # 十里街道, above ROOM; a full township may place the case at a sibling
    others = sorted(s.id for s in DEMO.stations if s.tier == "township" and s.id != township)[:3]
    supervisors = {station: next(u.id for u in DEMO.users if u.station == station and str(u.role) == "supervisor")
                   for station in others}  # fmt: skip
    async with contextlib.AsyncExitStack() as streams:
        watching = {
            station: await streams.enter_async_context(EventStream(api.client, api.tokens.headers(user)))
            for station, user in supervisors.items()
        }
        assert {w.status for w in watching.values()} == {200}
        case = await api.open_case()
        timeline = (await api.case(case["case_id"]))["timeline"]
        await asyncio.sleep(2.0)  # what a stream would wrongly show has had time to arrive
    visited = {e["data"]["station_id"] for e in timeline}
    outside = [station for station in others if station not in visited]
    assert outside, f"the case visited every township watched: {visited}"
    for station in outside:
        assert watching[station].of(case["case_id"]) == [], f"the supervisor of {station} saw the case"


# ---------------------------------------------------------------- SQL: bound parameters only

SQL_CALLS = {"text", "execute", "exec_driver_sql", "executemany", "fetch", "fetchrow", "fetchval"}
CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")
# Interpolations reviewed by hand: identifiers PostgreSQL cannot take as bound parameters, taken
# from constants of the same module (a loop variable over them). Anything else fails the test.
REVIEWED = {
    # names and SQL types of intake.cases columns, from _CASE_COLUMNS
    "services/intake/handlers.py": {"name", "kind"},
    # column names of intake.cases, from _PROJECTED
    "services/shared/case_view.py": {"column"},
    "services/shared/migrations/env.py": {"schema"},  # the schema names in SCHEMAS
    "services/shared/migrations/versions/0001_initial_schema.py": {"schema"},
    # the two directory tables and their trigger names, from TRIGGERS
    "services/shared/migrations/versions/0009_directory_version.py": {"table", "trigger"},
    # the bench floor's scratch tables, from _floor_tables (the schema constant and a hop number)
    "services/bench/baseline.py": {"inbox", "outbox"},
}


def interpolated_sql(source: str, reviewed: frozenset[str] = frozenset()) -> list[int]:
    """Lines where a string built at run time (f-string, %, +, .format) is passed as SQL from
    anything but module constants in ALL_CAPS (e.g. a NOTIFY channel, which takes no parameter)
    and the `reviewed` names."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        sql = node.args[0]
        built = isinstance(sql, ast.JoinedStr | ast.BinOp) or (
            isinstance(sql, ast.Call) and isinstance(sql.func, ast.Attribute) and sql.func.attr == "format"
        )
        if name not in SQL_CALLS or not built:
            continue
        names = {n.id for n in ast.walk(sql) if isinstance(n, ast.Name)}
        if any(not CONSTANT.fullmatch(n) and n not in reviewed for n in names):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    "source",
    [
        "session.execute(text(f\"SELECT * FROM cases WHERE id = '{case_id}'\"))",
        "conn.fetch('SELECT * FROM users WHERE id = ' + user_id)",
        "session.execute(text('SELECT %s' % value))",
        "conn.execute('DELETE FROM t WHERE id = {}'.format(x))",
    ],
)
def test_the_sql_check_finds_interpolation(source: str) -> None:
    assert interpolated_sql(source) == [1]


def test_the_sql_check_allows_bound_parameters_and_constants() -> None:
    assert interpolated_sql("session.execute(text('SELECT * FROM t WHERE id = :id'), {'id': x})") == []
    assert interpolated_sql("session.execute(text(f'NOTIFY {NOTIFY_CHANNEL}'))") == []


def test_services_build_sql_only_with_bound_parameters() -> None:
    found = {
        f"{path.relative_to(SERVICES.parent)}:{line}": path.read_text(encoding="utf-8").splitlines()[line - 1].strip()
        for path in sorted(SERVICES.rglob("*.py"))
        for line in interpolated_sql(
            path.read_text(encoding="utf-8"), frozenset(REVIEWED.get(str(path.relative_to(SERVICES.parent)), ()))
        )
    }
    assert not found, "SQL built by string interpolation:\n" + "\n".join(f"{k}: {v}" for k, v in found.items())
