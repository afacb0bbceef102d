"""Webhook delivery against a real HTTP server on 127.0.0.1: bytes, signature, retries, give-up."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest

from services.notifier.adapters import base as adapters_base
from services.notifier.channels import (
    UnsupportedChannel,
    WebhookChannel,
    build_channels,
    channel_for,
    encode_body,
    http_client,
    sign,
    verify_signature,
)
from services.notifier.domain import (
    ASSIGNED,
    ChannelConfig,
    NoisePolicy,
    Push,
    Recipient,
    RetryPolicy,
    plan_jobs,
    push_for,
)
from tests.support.retrying import deliver_with_retries
from tests.support.scripted_receiver import ScriptedReceiver
from tests.support.webhook_receiver import Receiver

SECRET = "s3cret-长密钥"
NO_JITTER = RetryPolicy(attempts=4, base_delay=0.5, max_delay=30.0, jitter=0.0)


class FakeSleep:
    """Records requested back-off delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not intercept 127.0.0.1.
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


def _push(url: str, secret: str | None = SECRET) -> Push:
    config = ChannelConfig(channel="webhook", url=url, secret=secret)
    data = {
        "case_id": "c-20240603-0001",
        "status": "offered",
        "tier": "township",
        "station_id": "T-360402101",
        "category": "elderly_care",
        "risk_level": "high",
        "resident_ref": "rr-9c1f0e7a",
        "sequence": 3,
        "worker_id": "w-0001",
        "accept_by": "2024-06-03T06:30:00Z",
    }
    recipient = Recipient(id="w-0001", kind="user", channels=[config])
    now, at_once = datetime(2024, 6, 3, 6, 0, tzinfo=UTC), NoisePolicy(digest_minutes=0)
    [job] = plan_jobs(ASSIGNED, data, "0b8f7a43-5a43-4e2a-9d8e-1f0c2b3a4d5e", [recipient], now=now, noise=at_once)
    return push_for([job], now)


async def test_webhook_posts_the_exact_canonical_body_with_delivery_headers(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    push = _push(f"{receiver.url}/hooks/w-0001")

    result = await WebhookChannel(client, timeout=5.0).send(push)

    assert result.ok and result.status == 200 and result.error is None
    [request] = receiver.requests
    assert (request.method, request.path) == ("POST", "/hooks/w-0001")
    assert request.body == encode_body(push.body)
    assert json.loads(request.body) == push.body
    assert "养老服务".encode() in request.body  # UTF-8 on the wire, not \u escapes
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "caselink-notifier/1"
    assert request.headers["x-caselink-delivery"] == str(push.delivery_id)


async def test_signature_header_verifies_against_the_received_raw_body(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    await WebhookChannel(client, timeout=5.0).send(_push(f"{receiver.url}/hooks/w-0001"))

    [request] = receiver.requests
    header = request.headers["x-caselink-signature"]
    assert header.startswith("sha256=")
    assert verify_signature(request.body, SECRET, header)
    assert not verify_signature(request.body, "wrong-secret", header)
    assert not verify_signature(request.body.replace(b"high", b"low"), SECRET, header)


async def test_signature_header_is_omitted_when_the_channel_has_no_secret(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    await WebhookChannel(client, timeout=5.0).send(_push(f"{receiver.url}/hooks/w-0001", secret=None))

    [request] = receiver.requests
    assert "x-caselink-signature" not in request.headers


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_answer_counts_as_delivered(receiver: Receiver, client: httpx.AsyncClient, status: int) -> None:
    receiver.fail(1, status)
    result = await WebhookChannel(client, timeout=5.0).send(_push(f"{receiver.url}/hook"))
    assert result.ok and result.status == status


async def test_failing_receiver_is_retried_until_delivered_with_the_same_delivery_id(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.fail(2, 503)
    sleep = FakeSleep()
    push = _push(f"{receiver.url}/hook")

    result, attempts = await deliver_with_retries(WebhookChannel(client, 5.0), push, NO_JITTER, sleep=sleep)

    assert result.ok and attempts == 3
    assert sleep.delays == [0.5, 1.0]
    assert [r.headers["x-caselink-delivery"] for r in receiver.requests] == [str(push.delivery_id)] * 3
    assert len({r.body for r in receiver.requests}) == 1
    assert len({r.headers["x-caselink-signature"] for r in receiver.requests}) == 1


async def test_delivery_gives_up_after_the_policy_attempts_are_used(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.fail(10, 500)
    sleep = FakeSleep()

    result, attempts = await deliver_with_retries(
        WebhookChannel(client, 5.0),
        _push(f"{receiver.url}/hook"),
        NO_JITTER,
        sleep=sleep,
        rng=random.Random(1),
    )

    assert (result.ok, result.status, result.retryable) == (False, 500, True)
    assert attempts == 4 and len(receiver.requests) == 4
    assert sleep.delays == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 301])
async def test_client_errors_are_not_retried(receiver: Receiver, client: httpx.AsyncClient, status: int) -> None:
    receiver.fail(1, status)
    sleep = FakeSleep()

    result, attempts = await deliver_with_retries(
        WebhookChannel(client, 5.0), _push(f"{receiver.url}/hook"), NO_JITTER, sleep=sleep
    )

    assert (result.ok, result.status, result.retryable) == (False, status, False)
    assert attempts == 1 and len(receiver.requests) == 1 and sleep.delays == []
    assert str(status) in (result.error or "")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_timeout_rate_limit_and_server_errors_are_retried(
    receiver: Receiver, client: httpx.AsyncClient, status: int
) -> None:
    receiver.fail(1, status)

    result, attempts = await deliver_with_retries(
        WebhookChannel(client, 5.0), _push(f"{receiver.url}/hook"), NO_JITTER, sleep=FakeSleep()
    )

    assert result.ok and attempts == 2


async def test_receiver_that_does_not_answer_in_time_is_retried_with_the_same_delivery_id(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.hang(1)
    # Long enough that an answering receiver never times out on a loaded CI machine; the hanging
    # one never answers at all.
    channel = WebhookChannel(client, timeout=1.0)
    push = _push(f"{receiver.url}/hook")

    first = await channel.send(push)
    assert (first.ok, first.retryable, first.status) == (False, True, None)
    assert "timed out" in (first.error or "")

    receiver.hang(1)
    result, attempts = await deliver_with_retries(channel, push, NO_JITTER, sleep=FakeSleep())
    assert result.ok and attempts == 2
    assert {r.headers["x-caselink-delivery"] for r in receiver.requests} == {str(push.delivery_id)}


async def test_unreachable_receiver_is_a_retryable_failure(client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port was free a moment ago and nothing listens on it now: connection refused.

    result = await WebhookChannel(client, 2.0).send(_push(f"http://127.0.0.1:{port}/hook"))

    assert (result.ok, result.status, result.retryable) == (False, None, True)
    assert "Connect" in (result.error or "")


async def test_webhook_without_a_url_fails_without_retry(client: httpx.AsyncClient) -> None:
    push = replace(_push("http://unused"), channel=ChannelConfig(channel="webhook", url=None))

    result, attempts = await deliver_with_retries(WebhookChannel(client, 1.0), push, NO_JITTER, sleep=FakeSleep())

    assert (result.ok, result.retryable, attempts) == (False, False, 1)
    assert result.error == "webhook channel has no url"


async def test_unsupported_channel_fails_at_once_with_a_clear_error(client: httpx.AsyncClient) -> None:
    channels = build_channels(client)
    sms = channel_for(channels, "sms")
    sleep = FakeSleep()

    result, attempts = await deliver_with_retries(sms, _push("http://unused"), NO_JITTER, sleep=sleep)

    assert isinstance(channels["webhook"], WebhookChannel)
    assert isinstance(sms, UnsupportedChannel) and sms.name == "sms"
    assert (result.ok, result.retryable, attempts, sleep.delays) == (False, False, 1, [])
    assert result.error == "channel 'sms' is not supported yet"


def test_signature_accepts_uppercase_hex_and_rejects_malformed_headers() -> None:
    body = b'{"case_id":"c-1"}'
    good = sign(body, SECRET)

    assert verify_signature(body, SECRET, good.upper().replace("SHA256=", "sha256="))
    assert verify_signature(body, SECRET, f"  {good} ")
    for bad in ["", "sha256=", good.replace("sha256=", "sha1="), "sha256=zz", "sha256=é" + good[8:]]:
        assert not verify_signature(body, SECRET, bad)


async def test_pushes_past_their_deadline_leave_the_shared_client_working(receiver: Receiver) -> None:
    """Rounds of pushes to a slow receiver, each given up at its deadline, then a push to a healthy
    receiver through the same client (the notifier's, `http_client`): it must go out, and no
    connection may be left behind in the pool.

    Before, the deadline cancelled the request, and the client kept httpx's default limit of 100
    connections: httpcore 1.0 kept the slot of a request cancelled while waiting for a connection,
    the pool filled with them, and every push of the process timed out. In the reliability stack
    that gave up over a thousand pushes to a receiver that was answering."""
    slow = ScriptedReceiver(default={"ok": True})
    slow.delay = 1.0
    await slow.start()
    try:
        async with http_client(timeout=5.0) as client:
            behind = WebhookChannel(client, timeout=0.5)
            for _ in range(4):
                results = await asyncio.gather(*(behind.send(_push(f"{slow.url}/hook")) for _ in range(120)))
                assert not any(result.ok for result in results)
            healthy = await WebhookChannel(client, timeout=5.0).send(_push(f"{receiver.url}/hook"))
            await asyncio.sleep(1.0)  # the abandoned requests end on httpx's own timeouts
            # httpcore's pool, read directly: the only way to see a slot kept for ever.
            pool = client._transport._pool  # type: ignore[attr-defined]
            # A connection made for a request that then stopped waiting is NEW (or CONNECTING) for ever.
            kept = [c.info() for c in pool.connections if c.info() == "CONNECTING" or ", NEW," in c.info()]
    finally:
        await slow.stop()
    assert healthy.ok, healthy.error
    assert len(receiver.requests) == 1
    assert kept == []


async def test_abandoned_requests_are_capped_by_cancelling_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver that trickles bytes for ever would keep a connection per abandoned push: past
    MAX_ABANDONED, the oldest abandoned request is cancelled after all."""
    monkeypatch.setattr(adapters_base, "MAX_ABANDONED", 2)
    monkeypatch.setattr(adapters_base, "_ABANDONED", {})
    started: list[str] = []

    async def never_done(request: httpx.Request) -> httpx.Response:  # the transport ignores timeouts
        started.append(request.url.path)
        await asyncio.sleep(60)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(never_done)) as client:
        for n in range(4):
            result = await adapters_base.post_once(client, f"http://receiver/{n}", body=b"{}", headers={}, seconds=0.05)
            assert isinstance(result, adapters_base.DeliveryResult) and result.retryable
        lingering = list(adapters_base._ABANDONED)
        assert len(lingering) == 2 and not any(request.done() for request in lingering)
        assert started == ["/0", "/1", "/2", "/3"]
        for request in lingering:
            request.cancel()
        await asyncio.gather(*lingering, return_exceptions=True)
    assert adapters_base._ABANDONED == {}
