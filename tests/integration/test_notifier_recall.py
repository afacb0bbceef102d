"""The notifier as a real process during quiet hours: a low-risk task waits for the morning, and
when its offer ends in the night (the worker declines, a supervisor closes the case), the waiting
push is recalled and never sent. A `closed` event is never pushed: the notifier reads it only to
recall."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from schemas.topics import CASE_EVENTS
from services.notifier.messages import BEIJING
from tests.integration.router_harness import SYSTEM_USER, RouterHarness, running_harness
from tests.support.network_builder import NetworkBuilder
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

POLICY = """\
version: 1
sla:
  critical: {accept: PT1H, resolve: P1D}
  high:     {accept: PT1H, resolve: P1D}
  medium:   {accept: PT1H, resolve: P1D}
  low:      {accept: PT24H, resolve: P30D}
load_weight: {critical: 1, high: 1, medium: 1, low: 1}
offers_per_tier: 2
lateral: false
rules:
  - name: default
    tier: township
"""
CATEGORY = "elderly_care"
FIRST, SECOND = "rc-w1", "rc-w2"
ROOM = "V-RC-1-1"  # the room of subtree RC's one township
SUPERVISOR = "rc-sup"


def quiet_hours_around_now() -> str:
    """A Beijing-time window from an hour ago to three hours on: now is always inside it."""
    now = datetime.now(BEIJING)
    return f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=3):%H:%M}"


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    await hooks.start()
    yield hooks
    await hooks.stop()


@pytest_asyncio.fixture(scope="module")
async def harness(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> AsyncIterator[RouterHarness]:
    net = NetworkBuilder()
    net.station("M-RC", "city")
    net.system_user(SYSTEM_USER)
    tree = net.subtree("RC", city="M-RC", townships=1)
    net.supervisor(SUPERVISOR, tree.townships[0])
    for worker_id in (FIRST, SECOND):
        worker = net.worker(worker_id, tree.townships[0], [CATEGORY], capacity=5)
        net.users[worker]["notify"] = [{"channel": "webhook", "url": f"{receiver.url}/{worker}", "secret": "s"}]
    async with running_harness(tmp_path_factory.mktemp("notifier-recall"), policy_yaml=POLICY, network=net) as h:
        await h.start_notifier(
            "notifier-1", CASELINK_NOTIFY_DIGEST_MINUTES="0", CASELINK_NOTIFY_QUIET_HOURS=quiet_hours_around_now()
        )
        assert tree.room() == ROOM
        yield h


async def task_jobs(harness: RouterHarness, case_id: str) -> dict[str, tuple[str, datetime]]:
    rows = await harness.sql(
        "SELECT recipient, status, due_at FROM notifier.jobs WHERE case_id = $1 AND purpose = 'task'", case_id
    )
    return {r["recipient"]: (r["status"], r["due_at"]) for r in rows}


async def wait_for_jobs(harness: RouterHarness, case_id: str, expected: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        jobs = await task_jobs(harness, case_id)
        if {recipient: status for recipient, (status, _) in jobs.items()} == expected:
            return jobs
        assert time.monotonic() < deadline, f"task jobs {jobs}, expected {expected}\n{harness.diagnostics()}"
        await asyncio.sleep(0.2)


async def held_task(harness: RouterHarness) -> tuple[str, str]:
    """A new low-risk case offered in the quiet hours, and its worker, whose task push is held."""
    case = await harness.submit_case(ROOM, CATEGORY, "low")
    await harness.events.wait_for_types(case, "assigned", within=20)
    worker = str(harness.events.named(case, "assigned")[0]["data"]["worker_id"])
    held = await wait_for_jobs(harness, case, {worker: "pending"})
    assert held[worker][1] > datetime.now(BEIJING) + timedelta(minutes=30)  # waits for the end of quiet hours
    return case, worker


async def test_a_task_held_for_the_morning_is_recalled_when_its_worker_declines(
    harness: RouterHarness, receiver: Receiver
) -> None:
    case, first = await held_task(harness)

    answer = await harness.command(case, "decline", first, reason="on leave")
    assert answer["outcome"] == "applied", answer
    second = SECOND if first == FIRST else FIRST
    await wait_for_jobs(harness, case, {first: "recalled", second: "pending"})
    assert receiver.requests == []  # nothing was pushed in the night, and the recalled task never will be


async def test_a_task_held_for_the_morning_is_recalled_when_a_supervisor_closes_the_case(
    harness: RouterHarness, receiver: Receiver
) -> None:
    case, worker = await held_task(harness)

    answer = await harness.command(case, "close", SUPERVISOR, reason="the family took her in")
    assert answer["outcome"] == "applied", answer
    await wait_for_jobs(harness, case, {worker: "recalled"})
    assert receiver.requests == []


async def test_a_task_given_up_on_is_not_sent_once_its_offer_ended_when_its_dead_letter_is_replayed(
    harness: RouterHarness, receiver: Receiver
) -> None:
    case, first = await held_task(harness)
    # As if every channel had refused the push: given up, its event waiting on the DLQ for a replay.
    await harness.sql(
        "UPDATE notifier.jobs SET status = 'failed', finished_at = now() "
        "WHERE case_id = $1 AND recipient = $2 AND purpose = 'task'",
        case,
        first,
    )
    answer = await harness.command(case, "decline", first, reason="conflict of interest")
    assert answer["outcome"] == "applied", answer
    second = SECOND if first == FIRST else FIRST
    await wait_for_jobs(harness, case, {first: "recalled", second: "pending"})

    # `caselink dlq replay` publishes the `assigned` event again, as it was.
    [assigned, *_] = harness.events.named(case, "assigned")
    await harness.producer.send_and_wait(CASE_EVENTS, json.dumps(assigned).encode(), key=case.encode())
    await asyncio.sleep(3)  # the notifier reads it within a poll or two
    assert {r: status for r, (status, _) in (await task_jobs(harness, case)).items()} == {
        first: "recalled",
        second: "pending",
    }
    assert receiver.requests == []
