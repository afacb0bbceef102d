"""Delivery channels: how a planned `Push` leaves the system, and how failed sends are retried.

Every adapter has the `Channel` shape; the plain webhook and in-app live here, the group robots,
email and SMS in `services/notifier/adapters/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import httpx

from services.notifier.adapters.base import (
    DELIVERED,
    RETRYABLE_CLIENT_STATUSES,
    SIGNATURE_SCHEME,
    USER_AGENT,
    DeliveryResult,
    classify_status,
    encode_body,
    failed,
    post_once,
    sign,
    verify_signature,
)
from services.notifier.adapters.mail import EmailChannel
from services.notifier.adapters.robots import DingtalkChannel, WecomChannel
from services.notifier.adapters.sms import SmsChannel
from services.notifier.domain import Push
from services.shared.settings import Settings

__all__ = [
    "RETRYABLE_CLIENT_STATUSES",
    "SIGNATURE_SCHEME",
    "USER_AGENT",
    "Channel",
    "DeliveryResult",
    "DingtalkChannel",
    "EmailChannel",
    "InappChannel",
    "SmsChannel",
    "UnsupportedChannel",
    "WebhookChannel",
    "WecomChannel",
    "build_channels",
    "channel_for",
    "classify_status",
    "encode_body",
    "sign",
    "verify_signature",
]


class Channel(Protocol):
    """A way to deliver pushes; `send` reports failures in its result rather than raising."""

    name: str

    async def send(self, push: Push) -> DeliveryResult:
        """Try to deliver a push once."""
        ...


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
            return failed("webhook channel has no url", retryable=False)
        body = encode_body(push.body)
        headers = {"Content-Type": "application/json", "X-Caselink-Delivery": str(push.delivery_id)}
        if push.channel.secret:
            headers["X-Caselink-Signature"] = sign(body, push.channel.secret)
        answer = await post_once(self._client, url, body=body, headers=headers, seconds=self._timeout)
        if isinstance(answer, DeliveryResult):
            return answer
        return classify_status(answer.status_code)


class InappChannel:
    """In-app delivery, which succeeds at once: the push already is in the app.

    The people-facing SSE stream (`GET /v1/stream`, services/intake/stream.py) streams every case
    event its user may see, including the `notified` event (channel `inapp`, recipient the user)
    that this successful send causes. That event IS the in-app message, so there is nothing to
    send here and nothing to retry.
    """

    name = "inapp"

    async def send(self, push: Push) -> DeliveryResult:
        """Report delivered; the resulting `notified` event reaches the user's stream."""
        return DELIVERED


class UnsupportedChannel:
    """Stands in for a channel name with no adapter yet; every send fails without retry."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, push: Push) -> DeliveryResult:
        """Fail at once with a clear, non-retryable error."""
        return failed(f"channel '{self.name}' is not supported yet", retryable=False)


def http_client(timeout: float) -> httpx.AsyncClient:
    """The notifier's one HTTP client, shared by every channel and receiver.

    It sets no connection limit of its own: the dispatcher's `max_in_flight` already bounds the
    pushes in flight. With a limit (httpx's default is 100), requests beyond it wait in httpcore's
    pool, and httpcore 1.0 keeps the slot of a request that stops waiting there at the wrong
    moment (its pool timeout, or a cancellation) for ever; once such slots filled the pool, every
    push of the process, to every receiver, timed out until it was restarted.
    """
    # trust_env=False: a proxy from the environment must not carry pushes to a station's server.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=20)
    return httpx.AsyncClient(trust_env=False, timeout=timeout, limits=limits)


def build_channels(
    client: httpx.AsyncClient, *, timeout: float = 10.0, settings: Settings | None = None
) -> dict[str, Channel]:
    """The channel adapters available to the notifier, by channel name.

    Email and SMS need server settings, so they exist only when `settings` is given (when their
    server is not configured they fail each push naming the missing variable).
    """
    channels: dict[str, Channel] = {
        "webhook": WebhookChannel(client, timeout),
        "wecom": WecomChannel(client, timeout),
        "dingtalk": DingtalkChannel(client, timeout),
        "inapp": InappChannel(),
    }
    if settings is not None:
        channels["email"] = EmailChannel(settings)
        channels["sms"] = SmsChannel(client, settings, timeout)
    return channels


def channel_for(channels: Mapping[str, Channel], name: str) -> Channel:
    """The adapter for a channel name, or an `UnsupportedChannel` when there is none."""
    return channels.get(name) or UnsupportedChannel(name)
