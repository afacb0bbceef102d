"""What every channel adapter shares: the result type, HTTP posting and status classification,
and the facts a human-readable message is made of."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from services.notifier.domain import Push
from services.notifier.messages import BEIJING, RISK_ZH

USER_AGENT = "caselink-notifier/1"
SIGNATURE_SCHEME = "sha256="
# Request timeout (408) and rate limiting (429) say "later", unlike every other 4xx.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})
PURPOSE_ZH = {"task": "新任务", "escalation": "上转通知", "warning": "时限提醒"}
PURPOSE_EN = {"task": "New task", "escalation": "Escalation", "warning": "Deadline notice"}


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one send: delivered, or why not and whether trying again may help."""

    ok: bool
    status: int | None
    error: str | None
    retryable: bool


DELIVERED = DeliveryResult(ok=True, status=None, error=None, retryable=False)


def failed(error: str, *, retryable: bool, status: int | None = None) -> DeliveryResult:
    """A failed send with its reason."""
    return DeliveryResult(ok=False, status=status, error=error, retryable=retryable)


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


def classify_status(status: int) -> DeliveryResult:
    """Map a receiver's HTTP status to a result: 2xx delivered; 5xx, 408 and 429 retryable."""
    if 200 <= status < 300:
        return DeliveryResult(ok=True, status=status, error=None, retryable=False)
    retryable = status >= 500 or status in RETRYABLE_CLIENT_STATUSES
    # 3xx lands here too: redirects are not followed for signed POSTs, so it is a
    # configuration problem that retrying will not fix.
    return DeliveryResult(ok=False, status=status, error=f"receiver answered HTTP {status}", retryable=retryable)


# Requests past their deadline, left to end on httpx's own timeouts (see post_once), oldest first.
_ABANDONED: dict[asyncio.Future[httpx.Response], None] = {}
# A receiver trickling bytes slower than the read timeout, for ever, would keep one connection per
# push: past this many abandoned requests the oldest is cancelled after all (its pool slot may then
# be kept, a smaller harm than sockets without end).
MAX_ABANDONED = 1000


async def post_once(
    client: httpx.AsyncClient, url: str, *, body: bytes, headers: dict[str, str], seconds: float
) -> httpx.Response | DeliveryResult:
    """POST raw bytes once within `seconds`; the response, or the failed result when no answer came.

    httpx's timeouts (connect, pool, write, each read: `seconds`) bound every step separately, so a
    receiver trickling bytes could hold a push for ever: the whole exchange also gets a deadline.
    At the deadline the request is abandoned, not cancelled: httpcore 1.0 can keep the pool slot of
    a cancelled request for ever (see `channels.http_client`).
    """
    request = asyncio.ensure_future(
        client.post(url, content=body, headers={"User-Agent": USER_AGENT, **headers}, timeout=seconds)
    )
    try:
        return await asyncio.wait_for(asyncio.shield(request), seconds)
    except (TimeoutError, httpx.TimeoutException):
        return failed(f"timed out after {seconds:g}s", retryable=True)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        return failed(f"bad url: {exc}", retryable=False)
    except httpx.TransportError as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return failed(detail, retryable=True)
    finally:
        if not request.done():  # past the deadline, or the caller itself was cancelled
            _ABANDONED[request] = None
            request.add_done_callback(_forget)
            if len(_ABANDONED) > MAX_ABANDONED:
                oldest = next(iter(_ABANDONED))
                del _ABANDONED[oldest]
                oldest.cancel()


def _forget(request: asyncio.Future[httpx.Response]) -> None:
    _ABANDONED.pop(request, None)
    if not request.cancelled():
        request.exception()  # retrieved: an abandoned request's failure is no news


@dataclass(frozen=True)
class MessageFacts:
    """The PII-free facts of a push, worded for people (from the push body only)."""

    purpose_zh: str
    purpose_en: str
    risk_level: str
    risk_zh: str
    text: str
    text_en: str
    case_id: str
    station: str
    deadline_zh: str | None

    @property
    def is_urgent(self) -> bool:
        """High and critical risk are highlighted where the channel can."""
        return self.risk_level in ("high", "critical")


def message_facts(push: Push) -> MessageFacts:
    """Collect what a human-readable message about a push may say."""
    body = push.body
    risk = str(body.get("risk_level") or "unknown")
    return MessageFacts(
        purpose_zh=PURPOSE_ZH.get(push.purpose, push.purpose),
        purpose_en=PURPOSE_EN.get(push.purpose, push.purpose),
        risk_level=risk,
        risk_zh=RISK_ZH.get(risk, "未知"),
        text=str(body.get("text") or ""),
        text_en=str(body.get("text_en") or ""),
        case_id=str(body.get("case_id") or push.case_id),
        station=str(body.get("station_id") or "-"),
        deadline_zh=beijing_time(body.get("deadline")),
    )


def beijing_time(deadline: object) -> str | None:
    """An ISO deadline as Beijing wall-clock text (`2024-06-03 14:30`), None when there is none."""
    if not isinstance(deadline, str) or not deadline:
        return None
    try:
        moment = datetime.fromisoformat(deadline)
    except ValueError:
        return deadline
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.astimezone(BEIJING):%Y-%m-%d %H:%M}"
