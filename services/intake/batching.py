"""Group commit: requests of one process hand their work to a single writer, which stores everything
pending in one transaction and answers each request with its own outcome.

No timer: while one batch is being written, the next accumulates; under light load a batch is one
request and costs what it did alone, under heavy load a commit (and its WAL flush) serves many.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from services.shared.logging import get_logger

log = get_logger(__name__)

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

MAX_BATCH = 200


class GroupCommitClosed(RuntimeError):
    """The writer has stopped (the process is shutting down); the request was not stored."""


class GroupCommit(Generic[Item, Outcome]):
    """One writer task for many submitters.

    `write(items)` stores a batch in one transaction and returns one outcome per item, in order; an
    item's own refusal (a revoked token, an unknown room) is an outcome, not an exception, so it
    never fails the rest. If `write` raises, nothing of the batch was committed: each item is then
    written again in a transaction of its own, so only the guilty one gets the error — unless
    `retry_alone(error)` says the error is nobody's fault (the database is gone), when every item
    gets it at once instead of waiting out one failure each.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Awaitable[Sequence[Outcome]]],
        *,
        max_batch: int = MAX_BATCH,
        retry_alone: Callable[[BaseException], bool] = lambda _: True,
        name: str = "group-commit",
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._retry_alone = retry_alone
        self._name = name
        self._pending: deque[tuple[Item, asyncio.Future[Outcome]]] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # batches written, and the items in them (for tests and the stats log)
        self.items = 0

    @property
    def waiting(self) -> int:
        """Items handed over and not yet taken into a batch."""
        return len(self._pending)

    def start(self) -> None:
        """Start the writer task (in the running loop)."""
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def submit(self, item: Item) -> Outcome:
        """The item's outcome once the transaction that stored it committed; its error if it failed."""
        if self._closing or self._task is None or self._task.done():
            raise GroupCommitClosed("the service is shutting down")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._arrived.set()
        # A caller that goes away cancels its future; the writer then skips it if not yet taken.
        return await future

    async def stop(self, *, grace: float = 10.0) -> None:
        """Take no more items, write those already waiting, then stop; whatever could not be
        written within `grace` seconds is answered with GroupCommitClosed (its transaction rolled back)."""
        self._closing = True
        self._arrived.set()
        if self._task is None or self._task.done():
            self._fail_pending(GroupCommitClosed("the service stopped before the request was stored"))
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._fail_pending(GroupCommitClosed("the service stopped before the request was stored"))

    async def _run(self) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                batch = self._take()
                if batch:
                    await self._write_batch(batch)
        except asyncio.CancelledError:
            self._fail_pending(GroupCommitClosed("the service stopped before the request was stored"))
            raise

    def _take(self) -> list[tuple[Item, asyncio.Future[Outcome]]]:
        batch: list[tuple[Item, asyncio.Future[Outcome]]] = []
        while self._pending and len(batch) < self._max_batch:
            item, future = self._pending.popleft()
            if not future.done():  # cancelled by its caller before it was written: drop it
                batch.append((item, future))
        return batch

    async def _write_batch(self, batch: list[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            _fail(batch, GroupCommitClosed("the service stopped before the request was stored"))
            raise
        except Exception as exc:
            if len(batch) == 1 or not self._retry_alone(exc):
                _fail(batch, exc)
                return
            log.warning("intake.batch_failed", items=len(batch), error=type(exc).__name__)
            for one in batch:
                await self._write_batch([one])
            return
        if len(outcomes) != len(batch):  # a bug in `write`: nobody may be left waiting for ever
            _fail(batch, RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}"))
            return
        self.batches += 1
        self.items += len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    def _fail_pending(self, error: BaseException) -> None:
        waiting = list(self._pending)
        self._pending.clear()
        _fail(waiting, error)


def _fail(batch: Sequence[tuple[object, asyncio.Future[Outcome]]], error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
