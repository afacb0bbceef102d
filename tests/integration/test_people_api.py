"""The people-facing API (docs/api-v1-people.md) from outside, route by route and role by role, on the
demo network: who may see a case, who may act on it, which statuses forbid an action, which bodies are
refused and why, the escalation queue, station workload and the live event stream.

Every case a test opens is closed again when the test ends, so the demo workers' loads come back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio

from services.shared.demo import CITY_ID, COUNTY_ID, OFF_DUTY, demo_network
from services.shared.directory import hash_token
from tests.integration.conftest import Stack
from tests.support.api_client import (
    CITY_SUPERVISOR,
    RISK_RANK,
    ROOM,
    ROOM_WORKER,
    Api,
    EventStream,
    Tokens,
    assert_applied,
    assert_error,
    error_fields,
    event_name,
    events_named,
    is_offered,
    referral,
    timeline_names,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEMO = demo_network()
TOWNSHIP, COUNTY = "T-360402101", "C-360402"  # 十里街道 above ROOM, 濂溪区 above it
TOWNSHIPS = [s.id for s in DEMO.stations if s.tier == "township"]
OTHER_ROOM, OTHER_ROOM_WORKER = "V-360402102001", "w-0032"  # 五里社区, under the sibling township 五里街道
COUNTY_SUPERVISOR, SYSTEM = "s-0002", "sys-portal"
OFF_DUTY_WORKER = "w-0014"  # a 莲花镇 (T-360402103) generalist, off duty in the demo: in the county's subtree
UNKNOWN_CASE = "00000000-0000-4000-8000-000000000000"
ACTIONS = ["accept", "decline", "start", "resolve", "close", "escalate", "refer-back", "assign"]
SUPERVISOR_ACTIONS = {"close", "escalate", "refer-back", "assign"}
ACTION_BODIES: dict[str, dict[str, Any]] = {
    "decline": {"reason": "本周外出培训，无法接案"},
    "resolve": {"outcome": "已链接居家养老服务"},
    "close": {"reason": "测试结束"},
    "escalate": {"reason": "需要总站协调"},
    "refer-back": {"reason": "由街道站跟进"},
    "assign": {"worker_id": "w-0009"},
}
QUEUE_REASONS = {"no_capacity", "offer_expired", "declined", "sla_breach", "manual", "rule"}


def staff(station: str, role: str) -> list[str]:
    """The ids of the demo users of one role at one station, in id order."""
    return sorted(u.id for u in DEMO.users if u.station == station and str(u.role) == role)


def supervisor_of(station: str) -> str:
    return staff(station, "supervisor")[0]


def person(who: str, case: dict[str, Any]) -> str:
    """A demo user standing in a given relation to the case."""
    sibling = next(t for t in TOWNSHIPS if t not in (TOWNSHIP, case["station_id"]))
    colleague = next(w for w in staff(TOWNSHIP, "worker") if w != case["assignee_id"])
    relations = {
        "assignee": case["assignee_id"],
        "room-worker": ROOM_WORKER,
        "other-room-worker": OTHER_ROOM_WORKER,
        "township-colleague": colleague,
        "county-worker": next(w for w in staff(COUNTY, "worker") if w != case["assignee_id"]),
        "sibling-worker": staff(sibling, "worker")[0],
        "township-supervisor": supervisor_of(TOWNSHIP),
        "county-supervisor": COUNTY_SUPERVISOR,
        "city-supervisor": CITY_SUPERVISOR,
        "sibling-supervisor": supervisor_of(sibling),
        "system": SYSTEM,
    }
    return str(relations[who])


@pytest.fixture(scope="module")
def tokens(stack: Stack) -> Tokens:
    tokens = Tokens(stack)
    supervisors = [u.id for u in DEMO.users if str(u.role) == "supervisor"]
    tokens.prefetch([ROOM_WORKER, OTHER_ROOM_WORKER, SYSTEM, *supervisors, *staff(TOWNSHIP, "worker")])
    return tokens


@pytest_asyncio.fixture
async def api(stack: Stack, tokens: Tokens) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False, timeout=30.0) as client:
        api = Api(client, tokens)
        try:
            yield api
        finally:
            await api.close_opened()


@pytest_asyncio.fixture(scope="module")
async def offered(stack: Stack, tokens: Tokens) -> AsyncIterator[dict[str, Any]]:
    """One case offered to a worker, shared by the tests that must leave it as it is (reads, refusals)."""
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False, timeout=30.0) as client:
        api = Api(client, tokens)
        try:
            yield await api.open_case(category="elderly_care")
        finally:
            await api.close_opened()


# ---------------------------------------------------------------- GET /v1/me


@pytest.mark.parametrize(
    ("user", "role", "station"),
    [(ROOM_WORKER, "worker", ROOM), ("s-0003", "supervisor", TOWNSHIP), (SYSTEM, "system", None)],
    ids=["worker", "supervisor", "system"],
)
async def test_me_says_whose_token_it_is(api: Api, user: str, role: str, station: str | None) -> None:
    answer = await api.get("/v1/me", user=user)
    assert answer.status_code == 200, answer.text
    me = answer.json()
    assert (me["id"], me["role"], me["station_id"]) == (user, role, station)
    assert me["name"] == next(u.name for u in DEMO.users if u.id == user)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer clk_this-token-was-never-issued", "Bearer", "Basic dzAwMzE6c2VjcmV0", "clk_no-scheme"],
    ids=["none", "unknown", "empty-bearer", "basic", "no-scheme"],
)
async def test_me_without_a_valid_token_is_unauthorized(stack: Stack, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False) as client:
        answer = await client.get("/v1/me", headers=headers)
    assert_error(answer, 401, "unauthorized")


async def test_a_revoked_token_is_unauthorized(stack: Stack) -> None:
    token = stack.cli("token", "create", "--user", ROOM_WORKER)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False) as client:
        assert (await client.get("/v1/me", headers=headers)).status_code == 200
        await stack.sql("UPDATE shared.api_tokens SET revoked_at = now() WHERE token_hash = $1", hash_token(token))
        assert_error(await client.get("/v1/me", headers=headers), 401, "unauthorized")


# ---------------------------------------------------------------- POST /v1/referrals (roles only)


@pytest.mark.parametrize(
    "user", ["s-0003", CITY_SUPERVISOR, OTHER_ROOM_WORKER, "w-0007"],
    ids=["township-supervisor", "city-supervisor", "worker-of-another-room", "worker-of-the-township"],
)  # fmt: skip
async def test_only_the_rooms_own_worker_or_a_system_user_may_submit_for_it(api: Api, user: str) -> None:
    answer = await api.post("/v1/referrals", user=user, json=referral())
    if answer.status_code == 202:
        api.opened.append(answer.json()["case_id"])
    assert_error(answer, 403, "forbidden")


# ---------------------------------------------------------------- GET /v1/cases/{id}


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("assignee", 200),
        ("room-worker", 200),
        ("township-supervisor", 200),
        ("county-supervisor", 200),
        ("city-supervisor", 200),
        ("system", 200),
        ("township-colleague", 200),
        ("county-worker", 200),
        ("other-room-worker", 404),
        ("sibling-worker", 404),
        ("sibling-supervisor", 404),
    ],
)
async def test_a_case_is_visible_to_its_worker_and_to_everyone_on_its_path_or_above_it(
    api: Api, offered: dict[str, Any], who: str, status: int
) -> None:
    answer = await api.get(f"/v1/cases/{offered['case_id']}", user=person(who, offered))
    if status == 200:
        assert answer.status_code == 200, answer.text
        assert answer.json()["case_id"] == offered["case_id"]
    else:
        # Out of sight is indistinguishable from not existing.
        unknown = assert_error(await api.get(f"/v1/cases/{UNKNOWN_CASE}", user=SYSTEM), 404)
        assert assert_error(answer, 404)["code"] == unknown["code"]


async def test_reading_a_case_needs_a_token(api: Api, offered: dict[str, Any]) -> None:
    assert_error(await api.get(f"/v1/cases/{offered['case_id']}", user=None), 401, "unauthorized")


# ---------------------------------------------------------------- actions: who may act


@pytest.mark.parametrize(
    ("who", "action"),
    [
        ("room-worker", "accept"),
        ("room-worker", "decline"),
        ("township-supervisor", "accept"),
        ("township-colleague", "accept"),
        ("county-worker", "decline"),
        ("system", "accept"),
        ("assignee", "close"),
        ("room-worker", "close"),
        ("system", "close"),
        ("assignee", "escalate"),
        ("assignee", "refer-back"),
        ("assignee", "assign"),
    ],
)
async def test_people_who_see_a_case_but_may_not_take_an_action_are_forbidden(
    api: Api, offered: dict[str, Any], who: str, action: str
) -> None:
    case_id = offered["case_id"]
    answer = await api.act(case_id, action, user=person(who, offered), body=ACTION_BODIES.get(action))
    assert_error(answer, 403, "forbidden")
    case = await api.case(case_id)
    assert (case["status"], case["assignee_id"]) == ("offered", offered["assignee_id"])


@pytest.mark.parametrize(
    ("who", "action"),
    [
        ("other-room-worker", "accept"),
        ("sibling-worker", "accept"),
        ("other-room-worker", "decline"),
        ("sibling-supervisor", "escalate"),
        ("sibling-supervisor", "close"),
        ("sibling-supervisor", "assign"),
        pytest.param("sibling-supervisor", "accept"),
        pytest.param("other-room-worker", "escalate"),
    ],
)
async def test_people_who_cannot_see_a_case_get_not_found_for_any_action(
    api: Api, offered: dict[str, Any], who: str, action: str
) -> None:
    answer = await api.act(offered["case_id"], action, user=person(who, offered), body=ACTION_BODIES.get(action))
    assert_error(answer, 404)


@pytest.mark.parametrize("action", ACTIONS)
async def test_an_action_on_an_unknown_case_is_not_found(api: Api, action: str) -> None:
    user = CITY_SUPERVISOR if action in SUPERVISOR_ACTIONS else ROOM_WORKER
    assert_error(await api.act(UNKNOWN_CASE, action, user=user, body=ACTION_BODIES.get(action)), 404)


@pytest.mark.parametrize("action", ACTIONS)
async def test_an_action_without_a_token_is_unauthorized(api: Api, offered: dict[str, Any], action: str) -> None:
    answer = await api.act(offered["case_id"], action, user=None, body=ACTION_BODIES.get(action))
    assert_error(answer, 401, "unauthorized")


# ---------------------------------------------------------------- actions: bad bodies


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="no-body"),
        pytest.param({}, id="empty"),
        pytest.param({"reason": ""}, id="blank"),
        pytest.param({"reason": "   "}, id="whitespace"),
        pytest.param({"reason": "x" * 2001}, id="too-long"),
    ],
)
async def test_a_decline_needs_a_reason(api: Api, offered: dict[str, Any], body: dict[str, Any] | None) -> None:
    answer = await api.act(offered["case_id"], "decline", user=offered["assignee_id"], body=body)
    assert_error(answer, 422)
    assert "reason" in error_fields(answer)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="no-body"),
        pytest.param({}, id="empty"),
        pytest.param({"worker_id": None}, id="null"),
        pytest.param({"worker_id": "w-9999"}, id="unknown"),
    ],
)
async def test_an_assignment_needs_a_known_worker(
    api: Api, offered: dict[str, Any], body: dict[str, Any] | None
) -> None:
    answer = await api.act(offered["case_id"], "assign", user=COUNTY_SUPERVISOR, body=body)
    assert_error(answer, 422)
    assert "worker_id" in error_fields(answer)


@pytest.mark.parametrize("station_id", ["T-000000000", CITY_ID], ids=["unknown", "above-the-case"])
async def test_a_referral_back_must_name_a_known_station_below_the_case(
    api: Api, offered: dict[str, Any], station_id: str
) -> None:
    body = {"station_id": station_id, "reason": "由街道站跟进"}
    answer = await api.act(offered["case_id"], "refer-back", user=COUNTY_SUPERVISOR, body=body)
    assert_error(answer, 422)
    assert "station_id" in error_fields(answer)


async def test_a_case_cannot_be_assigned_to_an_off_duty_worker(api: Api, offered: dict[str, Any]) -> None:
    assert OFF_DUTY_WORKER in OFF_DUTY
    body = {"worker_id": OFF_DUTY_WORKER}
    answer = await api.act(offered["case_id"], "assign", user=COUNTY_SUPERVISOR, body=body)
    assert_error(answer, 409, "conflict")
    assert (await api.case(offered["case_id"]))["assignee_id"] == offered["assignee_id"]


async def test_a_supervisor_cannot_assign_to_a_worker_outside_their_stations(api: Api, offered: dict[str, Any]) -> None:
    station = offered["station_id"]
    elsewhere = next(t for t in TOWNSHIPS if t != station)
    outsider = next(w for w in staff(elsewhere, "worker") if w not in OFF_DUTY)
    answer = await api.act(offered["case_id"], "assign", user=supervisor_of(station), body={"worker_id": outsider})
    assert_error(answer, 403, "forbidden")


# ---------------------------------------------------------------- actions: the worker's path


async def test_the_offered_worker_accepts_once_and_a_second_accept_conflicts(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, worker = case["case_id"], case["assignee_id"]

    assert_applied(await api.act(case_id, "accept", user=worker), case_id, "accepted")
    assert_error(await api.act(case_id, "accept", user=worker, body={}), 409, "conflict")

    seen = await api.wait_for_case(case_id, lambda c: c["status"] == "accepted")
    assert seen["assignee_id"] == worker
    assert [e["worker_id"] for e in events_named(seen, "accepted")] == [worker]


async def test_the_verdict_on_an_action_can_be_asked_for_later_applied_refused_or_pending(
    api: Api, stack: Stack
) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, worker = case["case_id"], case["assignee_id"]
    applied = assert_applied(await api.act(case_id, "accept", user=worker), case_id, "accepted")
    verdict = await api.get(f"/v1/cases/{case_id}/commands/{applied['command_id']}", user=worker)
    assert verdict.status_code == 200, verdict.text
    assert verdict.json() | {"outcome": "applied", "status": "accepted", "code": None} == verdict.json()
    assert verdict.json()["decided_at"]

    assert_error(await api.act(case_id, "decline", user=worker, body={"reason": "too late"}), 409, "conflict")
    (refused,) = await stack.sql(
        "SELECT command_id FROM intake.command_results WHERE case_id = $1 AND action = 'decline'", case_id
    )
    verdict = await api.get(f"/v1/cases/{case_id}/commands/{refused['command_id']}", user=COUNTY_SUPERVISOR)
    assert verdict.json() | {"outcome": "refused", "code": "conflict", "status": None} == verdict.json()
    assert "accepted" in verdict.json()["message"]

    never = await api.get(f"/v1/cases/{case_id}/commands/{uuid.uuid4()}", user=worker)
    assert (never.status_code, never.json()["outcome"]) == (200, "pending")
    assert_error(
        await api.get(f"/v1/cases/{case_id}/commands/{uuid.uuid4()}", user=OTHER_ROOM_WORKER), 404, "not_found"
    )
    assert_error(await api.get(f"/v1/cases/{case_id}/commands/not-a-uuid", user=worker), 422, "validation_failed")


async def test_the_assigned_worker_starts_and_resolves_and_a_resolved_case_cannot_be_started(api: Api) -> None:
    case = await api.open_case(category="social_assistance")
    case_id, worker = case["case_id"], case["assignee_id"]

    assert_applied(await api.act(case_id, "accept", user=worker), case_id, "accepted")
    assert_applied(await api.act(case_id, "start", user=worker, body={}), case_id, "in_progress")
    outcome = {"outcome": "已申请临时救助并链接社区志愿者"}
    assert_applied(await api.act(case_id, "resolve", user=worker, body=outcome), case_id, "resolved")
    assert_error(await api.act(case_id, "start", user=worker), 409, "conflict")

    seen = await api.wait_for_case(case_id, lambda c: c["status"] == "resolved")
    names = timeline_names(seen)
    assert names.index("accepted") < names.index("started") < names.index("resolved")
    assert events_named(seen, "resolved")[0]["outcome"] == outcome["outcome"]


async def test_a_declined_case_falls_through_to_another_candidate(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, worker = case["case_id"], case["assignee_id"]

    answer = await api.act(case_id, "decline", user=worker, body={"reason": "本周外出培训，无法接案"})
    assert_applied(answer, case_id, "offered", "escalated", "queued", "routed")

    seen = await api.wait_for_case(case_id, lambda c: "declined" in timeline_names(c) and c["assignee_id"] != worker)
    declined = events_named(seen, "declined")
    assert [(d["worker_id"], d["reason"]) for d in declined] == [(worker, "本周外出培训，无法接案")]
    # The worker who declined is never offered the case again.
    assert [a["worker_id"] for a in events_named(seen, "assigned")].count(worker) == 1
    # Not holding it any more, they may not accept it (they still see it: their station is on its
    # path): their own offer ended, a conflict with where the case is now.
    refused = assert_error(await api.act(case_id, "accept", user=worker), 409, "conflict")
    assert refused["message"] == f"worker {worker}'s offer of the case ended: it went to the next worker"


async def test_a_decline_reason_is_refused_or_kept_in_the_timeline_whatever_its_characters(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, worker = case["case_id"], case["assignee_id"]

    answer = await api.act(case_id, "decline", user=worker, body={"reason": "本周外出\x00培训"})
    if answer.status_code == 422:
        assert "reason" in error_fields(answer)
        return
    assert_applied(answer, case_id, "offered", "escalated", "queued", "routed")
    seen = await api.wait_for_case(case_id, lambda c: c["assignee_id"] != worker)
    sequences = [e["data"]["sequence"] for e in seen["timeline"]]
    assert sequences == list(range(1, len(sequences) + 1)), f"the timeline has gaps: {sequences}"
    assert "declined" in timeline_names(seen)


async def test_a_supervisor_closes_a_case_and_its_worker_may_not(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, worker = case["case_id"], case["assignee_id"]
    assert_applied(await api.act(case_id, "accept", user=worker), case_id, "accepted")

    assert_error(await api.act(case_id, "close", user=worker), 403, "forbidden")
    answer = await api.act(case_id, "close", user=supervisor_of(case["station_id"]), body={"reason": "居民已搬离"})
    assert_applied(answer, case_id, "closed")
    assert_error(await api.act(case_id, "close", user=COUNTY_SUPERVISOR), 409, "conflict")
    assert_error(await api.act(case_id, "start", user=worker), 409, "conflict")

    seen = await api.wait_for_case(case_id, lambda c: c["status"] == "closed")
    assert "closed" in timeline_names(seen)


# ---------------------------------------------------------------- actions: the supervisor's path


async def test_a_supervisor_escalates_a_case_one_tier_up(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, station = case["case_id"], case["station_id"]
    assert case["tier"] == "township"

    answer = await api.act(case_id, "escalate", user=supervisor_of(station), body={"reason": "需要总站协调"})
    assert_applied(answer, case_id, "escalated", "offered", "queued")

    seen = await api.wait_for_case(case_id, lambda c: "escalated" in timeline_names(c) and c["tier"] == "county")
    assert seen["station_id"] == COUNTY_ID
    up = events_named(seen, "escalated")[-1]
    assert (up["from_tier"], up["from_station_id"], up["reason"]) == ("township", station, "manual")
    # The worker who held the offer no longer does.
    assert seen["assignee_id"] != case["assignee_id"]


async def test_the_county_supervisor_refers_a_case_back_to_the_township(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id = case["case_id"]
    assert_applied(
        await api.act(case_id, "escalate", user=COUNTY_SUPERVISOR), case_id, "escalated", "offered", "queued"
    )
    await api.wait_for_case(case_id, lambda c: c["tier"] == "county")

    body = {"station_id": TOWNSHIP, "reason": "街道站有合适社工"}
    answer = await api.act(case_id, "refer-back", user=COUNTY_SUPERVISOR, body=body)
    assert_applied(answer, case_id, "routed", "offered", "escalated", "queued")

    seen = await api.wait_for_case(case_id, lambda c: "referred_back" in timeline_names(c))
    back = events_named(seen, "referred_back")[-1]
    assert (back["from_tier"], back["from_station_id"]) == ("county", COUNTY_ID)
    assert (back["tier"], back["station_id"], back["reason"]) == ("township", TOWNSHIP, "街道站有合适社工")


async def test_a_supervisor_assigns_a_case_to_a_worker_of_their_station(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, station = case["case_id"], case["station_id"]
    chosen = next(w for w in staff(station, "worker") if w != case["assignee_id"] and w not in OFF_DUTY)

    answer = await api.act(case_id, "assign", user=supervisor_of(station), body={"worker_id": chosen})
    assert_applied(answer, case_id, "offered")

    seen = await api.wait_for_case(case_id, lambda c: c["assignee_id"] == chosen and is_offered(c))
    assert events_named(seen, "assigned")[-1]["worker_id"] == chosen
    # The new holder may now act; the one who lost the offer (of the same station) may not.
    assert_error(await api.act(case_id, "accept", user=case["assignee_id"]), 403, "forbidden")
    assert_applied(await api.act(case_id, "accept", user=chosen), case_id, "accepted")


# ---------------------------------------------------------------- GET /v1/escalations


async def _queue_at_the_top(api: Api, case_id: str) -> dict[str, Any]:
    """Escalate tier by tier until nobody can take it: no demo city worker does elderly care."""
    for _ in range(3):
        answer = await api.act(case_id, "escalate", user=CITY_SUPERVISOR, body={"reason": "需要市中心协调"})
        assert_applied(answer, case_id, "escalated", "offered", "queued")
        if answer.json()["status"] == "queued":
            break
    return await api.wait_for_case(case_id, lambda c: c["status"] == "queued" and c["station_id"] == CITY_ID)


@pytest_asyncio.fixture(scope="module")
async def queued(stack: Stack, tokens: Tokens) -> AsyncIterator[list[dict[str, Any]]]:
    """Three cases waiting on the city centre's queue: a high-risk one, then two medium ones in order."""
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False, timeout=30.0) as client:
        api = Api(client, tokens)
        try:
            cases = []
            for risk in ("medium", "high", "medium"):
                case = await api.open_case(category="elderly_care", risk_level=risk)
                cases.append(await _queue_at_the_top(api, case["case_id"]))
            yield [cases[1], cases[0], cases[2]]
        finally:
            await api.close_opened()


async def _escalations(api: Api, user: str = CITY_SUPERVISOR, **params: Any) -> dict[str, Any]:
    answer = await api.get("/v1/escalations", user=user, params=params)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def test_the_escalation_queue_lists_the_most_urgent_and_longest_waiting_first(
    api: Api, queued: list[dict[str, Any]]
) -> None:
    page = await _escalations(api, limit=200)
    assert (page["limit"], page["offset"]) == (200, 0)
    items = page["items"]
    assert page["total"] >= len(queued) and len(items) == min(page["total"], 200)

    mine = [i for i in items if i["case_id"] in {c["case_id"] for c in queued}]
    assert [i["case_id"] for i in mine] == [c["case_id"] for c in queued]
    for row, case in zip(mine, queued, strict=True):
        assert (row["station_id"], row["tier"], row["status"]) == (CITY_ID, "city", "queued")
        assert (row["category"], row["risk_level"]) == (case["category"], case["risk_level"])
        assert row["reason"] in QUEUE_REASONS and row["assignee_id"] is None and row["closed_at"] is None
        assert isinstance(row["waiting_seconds"], int) and row["waiting_seconds"] >= 0 and row["since"]

    keys = [(RISK_RANK[i["risk_level"]], datetime.fromisoformat(i["since"]), i["case_id"]) for i in items]
    assert keys == sorted(keys), "not most urgent first"


async def test_the_escalation_queue_pages_with_limit_and_offset(api: Api, queued: list[dict[str, Any]]) -> None:
    everything = (await _escalations(api, limit=200))["items"]
    first = await _escalations(api, limit=1)
    assert (len(first["items"]), first["limit"], first["offset"], first["next_offset"]) == (1, 1, 0, 1)

    walked, offset = [], 0
    while offset is not None:
        page = await _escalations(api, limit=2, offset=offset)
        assert len(page["items"]) <= 2
        walked += page["items"]
        offset = page["next_offset"]
    assert [i["case_id"] for i in walked] == [i["case_id"] for i in everything]
    last = await _escalations(api, limit=2, offset=len(everything) - 1)
    assert len(last["items"]) == 1 and last["next_offset"] is None


async def test_the_escalation_queue_of_a_station_covers_only_it_and_the_stations_below(
    api: Api, queued: list[dict[str, Any]]
) -> None:
    ours = {c["case_id"] for c in queued}
    county = await _escalations(api, user=COUNTY_SUPERVISOR)
    assert not ours & {i["case_id"] for i in county["items"]}
    city = await _escalations(api, user=CITY_SUPERVISOR, station_id=CITY_ID, limit=200)
    assert ours <= {i["case_id"] for i in city["items"]}


async def test_a_closed_escalation_leaves_the_open_queue(api: Api, queued: list[dict[str, Any]]) -> None:
    gone = queued[-1]["case_id"]
    assert_applied(await api.act(gone, "close", user=CITY_SUPERVISOR), gone, "closed")
    await api.wait_for_case(gone, lambda c: c["status"] == "closed")

    open_ids = {i["case_id"] for i in (await _escalations(api, limit=200))["items"]}
    closed = {i["case_id"]: i for i in (await _escalations(api, status="closed", limit=200))["items"]}
    all_ids = {i["case_id"] for i in (await _escalations(api, status="all", limit=200))["items"]}
    assert gone not in open_ids and {c["case_id"] for c in queued[:-1]} <= open_ids
    assert closed[gone]["closed_at"] is not None
    assert {c["case_id"] for c in queued} <= all_ids


async def test_an_escalation_row_names_the_tier_of_the_station_it_waited_at_after_the_case_moved_down(
    api: Api,
) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, worker = case["case_id"], case["assignee_id"]
    await _queue_at_the_top(api, case_id)
    answer = await api.act(case_id, "assign", user=CITY_SUPERVISOR, body={"worker_id": worker})
    assert_applied(answer, case_id, "offered")
    await api.wait_for_case(case_id, lambda c: c["assignee_id"] == worker and is_offered(c))

    rows = (await _escalations(api, status="all", limit=500))["items"]
    (row,) = [r for r in rows if r["case_id"] == case_id]
    assert (row["station_id"], row["tier"], row["status"], row["assignee_id"]) == (CITY_ID, "city", "offered", worker)


@pytest.mark.parametrize(
    ("user", "params"),
    [
        (ROOM_WORKER, {}),
        (SYSTEM, {}),
        ("s-0003", {"station_id": "T-360402102"}),
        ("s-0003", {"station_id": COUNTY_ID}),
    ],
    ids=["worker", "system", "supervisor-of-a-sibling", "supervisor-below-it"],
)
async def test_the_escalation_queue_is_for_supervisors_of_the_station_or_above(
    api: Api, user: str, params: dict[str, str]
) -> None:
    assert_error(await api.get("/v1/escalations", user=user, params=params), 403, "forbidden")


async def test_the_escalation_queue_of_an_unknown_station_is_not_found_as_a_workload_would_be(api: Api) -> None:
    answer = await api.get("/v1/escalations", user=CITY_SUPERVISOR, params={"station_id": "T-NOPE"})

    assert assert_error(answer, 404, "not_found")["message"] == "no station 'T-NOPE'"
    assert error_fields(answer) == {"station_id"}
    assert_error(await api.get("/v1/stations/T-NOPE/workload", user=CITY_SUPERVISOR), 404, "not_found")


async def test_the_escalation_queue_refuses_an_unknown_status_and_needs_a_token(api: Api) -> None:
    answer = await api.get("/v1/escalations", user=CITY_SUPERVISOR, params={"status": "pending"})
    assert_error(answer, 422)
    assert "status" in error_fields(answer)
    assert_error(await api.get("/v1/escalations", user=None), 401, "unauthorized")


# ---------------------------------------------------------------- GET /v1/stations/{id}/workload


@pytest.mark.parametrize("user", ["s-0003", COUNTY_SUPERVISOR, CITY_SUPERVISOR])
async def test_a_station_workload_shows_its_workers_to_supervisors_of_it_or_above(api: Api, user: str) -> None:
    answer = await api.get(f"/v1/stations/{TOWNSHIP}/workload", user=user)
    assert answer.status_code == 200, answer.text
    workload = answer.json()
    assert {k: workload["station"][k] for k in ("id", "tier", "parent_id")} == {
        "id": TOWNSHIP, "tier": "township", "parent_id": COUNTY_ID
    }  # fmt: skip
    assert workload["station"]["name"] == "十里街道社工站"
    assert isinstance(workload["open_cases"], int) and isinstance(workload["escalations_open"], int)
    assert [c["id"] for c in workload["children"]] == sorted(s.id for s in DEMO.stations if s.parent == TOWNSHIP)

    demo = {u.id: u for u in DEMO.users}
    assert [w["id"] for w in workload["workers"]] == staff(TOWNSHIP, "worker")
    for row in workload["workers"]:
        spec = demo[row["id"]]
        assert (row["name"], row["capacity"], row["certification"], row["on_duty"]) == (
            spec.name, spec.capacity, str(spec.certification), spec.on_duty
        )  # fmt: skip
        assert sorted(row["specialties"]) == sorted(str(s) for s in spec.specialties)
        assert 0 <= row["load"] <= row["capacity"] and isinstance(row["open_cases"], int)


async def test_a_workers_load_counts_the_case_offered_to_them_until_it_is_closed(api: Api) -> None:
    case = await api.open_case(category="elderly_care")
    case_id, station, worker = case["case_id"], case["station_id"], case["assignee_id"]

    async def load() -> int:
        answer = await api.get(f"/v1/stations/{station}/workload", user=CITY_SUPERVISOR)
        assert answer.status_code == 200, answer.text
        return int(next(w["load"] for w in answer.json()["workers"] if w["id"] == worker))

    holding = await load()
    assert holding >= 1
    assert_applied(await api.act(case_id, "close", user=CITY_SUPERVISOR), case_id, "closed")
    await api.wait_for_case(case_id, lambda c: c["status"] == "closed")
    assert await load() == holding - 1  # medium risk weighs 1


@pytest.mark.parametrize(
    ("user", "station", "status"),
    [
        ("w-0007", TOWNSHIP, 403),
        ("s-0004", TOWNSHIP, 403),
        ("s-0003", COUNTY_ID, 403),
        (CITY_SUPERVISOR, "T-000000000", 404),
        (None, TOWNSHIP, 401),
    ],
    ids=["worker", "supervisor-of-a-sibling", "supervisor-below-it", "unknown-station", "no-token"],
)
async def test_a_station_workload_is_refused_outside_the_supervisors_stations(
    api: Api, user: str | None, station: str, status: int
) -> None:
    assert_error(await api.get(f"/v1/stations/{station}/workload", user=user), status)


# ---------------------------------------------------------------- GET /v1/stream


@pytest.mark.parametrize("token", [None, "clk_this-token-was-never-issued"], ids=["none", "unknown"])
async def test_the_stream_needs_a_valid_token(api: Api, token: str | None) -> None:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with EventStream(api.client, headers) as stream:
        assert stream.status == 401


async def test_a_supervisor_stream_delivers_case_events_and_resumes_after_the_last_event_id(api: Api) -> None:
    # The county's supervisor: earlier tests may have filled the room's township, and a case
    # placed at a sibling township is out of that township supervisor's sight.
    supervisor = api.tokens.headers(COUNTY_SUPERVISOR)
    async with EventStream(api.client, supervisor) as live:
        assert live.status == 200
        case_id = await api.submit()
        await live.wait_for(lambda _: bool(live.of(case_id)))
    first = live.of(case_id)[0]
    event = first.json()
    assert first.event == "case" and first.id
    assert (event["specversion"], event["subject"], event["data"]["case_id"]) == ("1.0", case_id, case_id)
    assert event["type"].startswith("caselink.case.") and event["id"]

    async with EventStream(api.client, supervisor | {"Last-Event-ID": first.id}) as resumed:
        assert resumed.status == 200
        await api.wait_for_case(case_id, is_offered)
        assert_applied(await api.act(case_id, "close", user=COUNTY_SUPERVISOR), case_id, "closed")
        timeline = await api.wait_for_case(case_id, lambda c: c["status"] == "closed")
        later = {e["data"]["sequence"] for e in timeline["timeline"]} - set(range(event["data"]["sequence"] + 1))
        await resumed.wait_for(lambda _: later <= {m.json()["data"]["sequence"] for m in resumed.of(case_id)})
    replayed = resumed.of(case_id)
    assert first.id not in {m.id for m in replayed}
    assert event["id"] not in {m.json()["id"] for m in replayed}
    assert all(m.json()["data"]["sequence"] > event["data"]["sequence"] for m in replayed)
    assert len({m.json()["id"] for m in replayed}) == len(replayed)


async def test_a_stream_ends_once_its_token_is_revoked(api: Api, stack: Stack) -> None:
    token = stack.cli("token", "create", "--user", COUNTY_SUPERVISOR)
    async with EventStream(api.client, {"Authorization": f"Bearer {token}"}) as live:
        assert live.status == 200
        await stack.sql("UPDATE shared.api_tokens SET revoked_at = now() WHERE token_hash = $1", hash_token(token))
        revoked_at = time.monotonic()
        await api.submit()  # events go on being written while the revocation is noticed
        await live.wait_for(lambda messages: any(m.event == "error" for m in messages), within=15)
        assert time.monotonic() - revoked_at < 8  # RECHECK_TOKEN_SECONDS, and a poll
        deadline = time.monotonic() + 5
        while not live.closed:
            assert time.monotonic() < deadline, "the stream stayed open after its token was revoked"
            await asyncio.sleep(0.1)
    assert live.messages[-1].event == "error"  # the last message: nothing after it
    assert live.messages[-1].json()["error"]["code"] == "unauthorized"


async def test_a_worker_stream_shows_only_the_cases_in_their_sight(api: Api) -> None:
    async with (
        EventStream(api.client, api.tokens.headers(ROOM_WORKER)) as ours,
        EventStream(api.client, api.tokens.headers(OTHER_ROOM_WORKER)) as theirs,
    ):
        assert ours.status == theirs.status == 200
        our_case = await api.submit()
        consent = {"given": True, "scope": "service", "recorded_by": OTHER_ROOM_WORKER}
        their_case = await api.submit(user=OTHER_ROOM_WORKER, room_id=OTHER_ROOM, consent=consent)
        for case_id in (our_case, their_case):
            await api.wait_for_case(case_id, is_offered)

        def saw_assigned(stream: EventStream, case_id: str) -> bool:
            return "assigned" in {event_name(m.json()) for m in stream.of(case_id)}

        await ours.wait_for(lambda _: saw_assigned(ours, our_case))
        await theirs.wait_for(lambda _: saw_assigned(theirs, their_case))
    assert theirs.of(our_case) == [] and ours.of(their_case) == []


async def test_a_worker_sees_live_the_event_that_took_their_offer_to_another_station(api: Api) -> None:
    # The case's room is not below the sibling township, so once the case leaves its worker, only
    # the event's own audience (who held it just before) lets that worker see the event.
    case = await api.open_case(category="elderly_care")
    case_id, first = case["case_id"], case["assignee_id"]
    sibling = next(t for t in TOWNSHIPS if t not in (TOWNSHIP, case["station_id"]))
    away = next(w for w in staff(sibling, "worker") if w not in OFF_DUTY)
    assigned = await api.act(case_id, "assign", user=COUNTY_SUPERVISOR, body={"worker_id": away})
    assert_applied(assigned, case_id, "offered")
    async with EventStream(api.client, api.tokens.headers(away)) as theirs:
        assert theirs.status == 200
        back = await api.act(case_id, "assign", user=COUNTY_SUPERVISOR, body={"worker_id": first})
        assert_applied(back, case_id, "offered")

        def saw_it_go_back(_: list[Any]) -> bool:
            return any(
                event_name(m.json()) == "assigned" and m.json()["data"]["worker_id"] == first
                for m in theirs.of(case_id)
            )

        await theirs.wait_for(saw_it_go_back)
        # From then on the case is out of their sight: a later event of it is not streamed to them.
        assert_applied(
            await api.act(case_id, "close", user=COUNTY_SUPERVISOR, body={"reason": "test"}), case_id, "closed"
        )
        await api.wait_for_case(case_id, lambda c: c["status"] == "closed")
        await asyncio.sleep(1.5)  # three of the stream's polls
    assert "closed" not in {event_name(m.json()) for m in theirs.of(case_id)}
    assert_error(await api.get(f"/v1/cases/{case_id}", user=away), 404)
