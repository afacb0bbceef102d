"""Send one push until delivered or out of attempts, with the notifier's backoff, in the foreground:
how the channel tests exercise a channel's retry classification against a real server. (The
notifier itself never waits: its dispatcher reschedules a failed job through `due_at`.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from services.notifier.channels import Channel, DeliveryResult
from services.notifier.domain import Push, RetryPolicy


async def deliver_with_retries(
    channel: Channel,
    push: Push,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> tuple[DeliveryResult, int]:
    """Send until delivered, failed for good, or out of attempts; return (result, attempts used)."""
    rng = rng or random.Random()
    attempt = 1
    while True:
        # Every attempt re-sends the same push, so the delivery id (and the signed bytes) are
        # identical and the receiver can drop duplicates of a send that did arrive but timed out.
        result = await channel.send(push)
        if result.ok or not result.retryable or attempt >= policy.attempts:
            return result, attempt
        await sleep(policy.delay(attempt, rng))
        attempt += 1
