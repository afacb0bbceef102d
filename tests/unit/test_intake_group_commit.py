"""Group commit of HTTP referrals without a database: the writer task (batching.GroupCommit) with a
fake `write`, the per-item decisions of a batch (referral_batch) and the token cache."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from schemas.referral import ReferralSubmission
from services.intake.access import TokenCache
from services.intake.batching import GroupCommit, GroupCommitClosed
from services.intake.domain import SubmissionInvalid
from services.intake.referral_batch import (
    Forbidden,
    HttpSubmission,
    Unauthorized,
    judge_batch,
    share_cases,
)
from services.shared.directory import StationRow, User

ROOM = StationRow("V-1", "room", "village", "T-1")
TOWNSHIP = StationRow("T-1", "township", "township", None)
WORKER = User("w-1", "worker", "V-1")
SYSTEM = User("sys", "system", None)


def submission(room: str = "V-1", submitted_by: str | None = None) -> ReferralSubmission:
    return ReferralSubmission.model_validate(
        {
            "room_id": room,
            "submitted_by": submitted_by,
            "category": "elderly_care",
            "risk_level": "low",
            "summary": "s",
            "resident": {"name": "n", "birth_year": 1950, "gender": "female", "address": "a"},
            "consent": {"given": True, "scope": "service", "recorded_by": "w-1"},
        }
    )


def item(user: User = WORKER, *, key: str | None = None, room: str = "V-1", token: str = "t-w") -> HttpSubmission:
    return HttpSubmission(submission(room), user, token, key)


class FakeWriter:
    """Records each batch; an item whose value is in `poison` fails any batch it is in."""

    def __init__(self, poison: set[int] | None = None, error: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.poison = poison or set()
        self.error = error or RuntimeError("boom")
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: Sequence[int]) -> list[str]:
        await self.gate.wait()
        self.batches.append(list(items))
        if self.poison & set(items):
            raise self.error
        return [f"ok-{i}" for i in items]


def held(writer: FakeWriter) -> GroupCommit[int, str]:
    """A running group commit whose writer waits in its first batch until `writer.gate` is set."""
    commit: GroupCommit[int, str] = GroupCommit(writer)
    commit.start()
    writer.gate.clear()
    return commit


async def test_requests_waiting_while_a_batch_is_written_go_together_in_the_next() -> None:
    writer = FakeWriter()
    commit = held(writer)
    first = asyncio.create_task(commit.submit(0))
    await asyncio.sleep(0.01)  # the writer took [0] and waits in it
    rest = [asyncio.create_task(commit.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    assert await asyncio.gather(first, *rest) == [f"ok-{i}" for i in range(6)]
    assert writer.batches == [[0], [1, 2, 3, 4, 5]]
    await commit.stop()


async def test_a_batch_is_never_larger_than_the_cap() -> None:
    writer = FakeWriter()
    commit: GroupCommit[int, str] = GroupCommit(writer, max_batch=3)
    commit.start()
    writer.gate.clear()
    tasks = [asyncio.create_task(commit.submit(i)) for i in range(7)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    await asyncio.gather(*tasks)
    assert all(len(batch) <= 3 for batch in writer.batches)
    assert sorted(i for batch in writer.batches for i in batch) == list(range(7))
    await commit.stop()


async def test_a_failing_batch_is_written_again_one_by_one_and_only_the_guilty_item_fails() -> None:
    writer = FakeWriter(poison={3})
    commit = held(writer)
    tasks = [asyncio.create_task(commit.submit(i)) for i in range(5)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert answers[:3] == ["ok-0", "ok-1", "ok-2"] and answers[4] == "ok-4"
    assert isinstance(answers[3], RuntimeError)
    assert [1] in writer.batches and [3] in writer.batches  # each again alone
    await commit.stop()


async def test_an_error_that_is_nobodys_fault_fails_the_batch_at_once() -> None:
    writer = FakeWriter(poison={0}, error=ConnectionError("database gone"))
    commit: GroupCommit[int, str] = GroupCommit(writer, retry_alone=lambda e: not isinstance(e, ConnectionError))
    commit.start()
    writer.gate.clear()
    tasks = [asyncio.create_task(commit.submit(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(a, ConnectionError) for a in answers)
    assert len(writer.batches) == 1
    await commit.stop()


async def test_stopping_writes_what_was_already_handed_over_then_refuses_new_items() -> None:
    writer = FakeWriter()
    commit = held(writer)
    tasks = [asyncio.create_task(commit.submit(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    stopping = asyncio.create_task(commit.stop())
    await asyncio.sleep(0.01)
    with pytest.raises(GroupCommitClosed):
        await commit.submit(99)
    writer.gate.set()
    await stopping
    assert await asyncio.gather(*tasks) == [f"ok-{i}" for i in range(4)]


async def test_items_still_pending_when_the_grace_runs_out_are_answered_not_left_hanging() -> None:
    writer = FakeWriter()
    commit = held(writer)  # the database never answers
    tasks = [asyncio.create_task(commit.submit(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    await commit.stop(grace=0.05)
    answers = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 1)
    assert all(isinstance(a, GroupCommitClosed) for a in answers)


async def test_a_request_that_went_away_before_its_batch_is_not_written() -> None:
    writer = FakeWriter()
    commit = held(writer)
    first = asyncio.create_task(commit.submit(0))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(commit.submit(1))
    kept = asyncio.create_task(commit.submit(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    writer.gate.set()
    assert await asyncio.gather(first, kept) == ["ok-0", "ok-2"]
    assert writer.batches == [[0], [2]]
    await commit.stop()


def test_a_batch_refuses_revoked_tokens_forbidden_callers_and_rooms_that_are_not_village_rooms() -> None:
    items = [
        item(),
        item(token="revoked"),
        item(SYSTEM, token="t-s", room="T-1"),
        HttpSubmission(submission(submitted_by="w-2"), WORKER, "t-w", None),
        item(room="V-9"),
    ]
    refused = judge_batch(items, {"t-w": WORKER, "t-s": SYSTEM}, {"V-1": ROOM, "T-1": TOWNSHIP})
    assert set(refused) == {1, 2, 3, 4}
    assert isinstance(refused[1], Unauthorized)
    assert isinstance(refused[2], SubmissionInvalid) and refused[2].errors[0].field == "room_id"
    assert isinstance(refused[3], Forbidden) and refused[3].field == "submitted_by"
    assert isinstance(refused[4], Forbidden) and refused[4].field == "room_id"  # not the worker's room: 403 before 422


def test_a_token_whose_user_changed_since_the_route_checked_it_is_refused() -> None:
    moved = User("w-1", "worker", "V-2")
    assert isinstance(judge_batch([item()], {"t-w": moved}, {"V-1": ROOM})[0], Unauthorized)


def test_one_key_of_one_user_shares_a_case_while_the_same_key_of_another_user_does_not() -> None:
    items = [item(key="k"), item(key="k"), item(SYSTEM, key="k", token="t-s"), item(), item()]
    assert share_cases(items, range(5)) == {0: 0, 1: 0, 2: 2, 3: 3, 4: 4}
    assert share_cases(items, [1, 2]) == {1: 1, 2: 2}  # the first of the stored ones owns the case


def test_one_key_with_two_referrals_shares_a_case_only_among_those_that_say_the_same() -> None:
    other = HttpSubmission(submission().model_copy(update={"summary": "another"}), WORKER, "t-w", "k")
    named = HttpSubmission(submission(submitted_by=WORKER.id), WORKER, "t-w", "k")  # as intake stores it
    items = [other, item(key="k"), other, named]
    assert share_cases(items, range(4)) == {0: 0, 1: 1, 2: 0, 3: 1}


def test_the_token_cache_forgets_after_its_time_and_on_request() -> None:
    now = [0.0]
    cache = TokenCache(ttl=5, clock=lambda: now[0])
    cache.put("h", WORKER)
    assert cache.get("h") == WORKER
    now[0] = 5.0
    assert cache.get("h") is None
    cache.put("h", WORKER)
    cache.forget("h")
    assert cache.get("h") is None
