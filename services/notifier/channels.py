"""Delivery channels: how a planned `Push` leaves the system, and how failed sends are retried."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from services.notifier.domain import Push, RetryPolicy

USER_AGENT = "caselink-notifier/1"
SIGNATURE_SCHEME = "sha256="
# Request timeout (408) and rate limiting (429) say "later", unlike every other 4xx.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one send: delivered, or why not and whether trying again may help."""

    ok: bool
    status: int | None
    error: str | None
    retryable: bool


class Channel(Protocol):
    """A way to deliver pushes; `send` reports failures in its result rather than raising."""

    name: str

    async def send(self, push: Push) -> DeliveryResult:
        """Try to deliver a push once."""
        ...


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The exact bytes sent and signed for a push body (compact, sorted keys, UTF-8)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def sign(body: bytes, secret: str) -> str:
    """The `X-Caselink-Signature` value for a raw body: `sha256=<hex HMAC-SHA256>`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_SCHEME}{digest}"


def verify_signature(body: bytes, secret: str, header: str) -> bool:
    """Whether a `X-Caselink-Signature` header matches the raw body, compared in constant time."""
    header = header.strip()
    if not header.startswith(SIGNATURE_SCHEME):
        return False
    received = header[len(SIGNATURE_SCHEME) :].lower().encode("ascii", "replace")
    expected = sign(body, secret)[len(SIGNATURE_SCHEME) :].encode("ascii")
    return hmac.compare_digest(expected, received)


class WebhookChannel:
    """POSTs the push body as signed JSON to the channel's URL."""

    name = "webhook"

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def send(self, push: Push) -> DeliveryResult:
        """POST the push once and classify the outcome."""
        url = push.channel.url
        if not url:
            return DeliveryResult(ok=False, status=None, error="webhook channel has no url", retryable=False)
        body = encode_body(push.body)
        headers = {
            "Content-Type": "application/json",
            "X-Caselink-Delivery": str(push.delivery_id),
            "User-Agent": USER_AGENT,
        }
        if push.channel.secret:
            headers["X-Caselink-Signature"] = sign(body, push.channel.secret)
        try:
            # httpx timeouts bound each read separately; a receiver trickling bytes could hold
            # the notifier forever, so the whole exchange also gets one overall deadline.
            async with asyncio.timeout(self._timeout):
                response = await self._client.post(url, content=body, headers=headers, timeout=self._timeout)
        except (TimeoutError, httpx.TimeoutException):
            return DeliveryResult(ok=False, status=None, error=f"timed out after {self._timeout:g}s", retryable=True)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return DeliveryResult(ok=False, status=None, error=f"bad webhook url: {exc}", retryable=False)
        except httpx.TransportError as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return DeliveryResult(ok=False, status=None, error=detail, retryable=True)
        return classify_status(response.status_code)


def classify_status(status: int) -> DeliveryResult:
    """Map a receiver's HTTP status to a result: 2xx delivered; 5xx, 408 and 429 retryable."""
    if 200 <= status < 300:
        return DeliveryResult(ok=True, status=status, error=None, retryable=False)
    retryable = status >= 500 or status in RETRYABLE_CLIENT_STATUSES
    # 3xx lands here too: redirects are not followed for signed POSTs, so it is a
    # configuration problem that retrying will not fix.
    return DeliveryResult(ok=False, status=status, error=f"receiver answered HTTP {status}", retryable=retryable)


class UnsupportedChannel:
    """Stands in for a channel name with no adapter yet; every send fails without retry."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, push: Push) -> DeliveryResult:
        """Fail at once with a clear, non-retryable error."""
        return DeliveryResult(
            ok=False, status=None, error=f"channel '{self.name}' is not supported yet", retryable=False
        )


def build_channels(client: httpx.AsyncClient, *, timeout: float = 10.0) -> dict[str, Channel]:
    """The channel adapters available to the notifier, by channel name."""
    return {"webhook": WebhookChannel(client, timeout)}


def channel_for(channels: Mapping[str, Channel], name: str) -> Channel:
    """The adapter for a channel name, or an `UnsupportedChannel` when there is none."""
    return channels.get(name) or UnsupportedChannel(name)


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
