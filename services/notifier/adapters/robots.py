"""WeCom (企业微信) and DingTalk (钉钉) group-robot webhooks: markdown messages, errcode answers,
and DingTalk's signed-URL mode."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import httpx

from services.notifier.adapters.base import (
    DeliveryResult,
    MessageFacts,
    classify_status,
    failed,
    message_facts,
    post_once,
)
from services.notifier.domain import Push

# The robots answer HTTP 200 and put the verdict in `errcode`; only these codes mean "later".
WECOM_RATE_LIMITED = 45009
DINGTALK_RATE_LIMITED = 130101


def wecom_markdown(facts: MessageFacts) -> str:
    """WeCom markdown content: title with purpose and risk, the text, case, station and deadline."""
    risk = f'<font color="warning">{facts.risk_zh}</font>' if facts.is_urgent else facts.risk_zh
    lines = [
        f"### {facts.purpose_zh}（风险：{risk}）",
        facts.text,
        f'> 个案：<font color="comment">{facts.case_id}</font>',
        f'> 站点：<font color="comment">{facts.station}</font>',
    ]
    if facts.deadline_zh:
        lines.append(f"> 时限：{facts.deadline_zh}（北京时间）")
    return "\n".join(lines)


def dingtalk_title(facts: MessageFacts) -> str:
    """The DingTalk message title (what the chat list previews)."""
    return f"{facts.purpose_zh}（风险：{facts.risk_zh}）"


def dingtalk_markdown(facts: MessageFacts) -> str:
    """DingTalk markdown text; it has no font colours, so urgent risk is bold instead."""
    risk = f"**{facts.risk_zh}**" if facts.is_urgent else facts.risk_zh
    lines = [
        f"### {facts.purpose_zh}（风险：{risk}）",
        "",
        facts.text,
        "",
        f"- 个案：{facts.case_id}",
        f"- 站点：{facts.station}",
    ]
    if facts.deadline_zh:
        lines.append(f"- 时限：{facts.deadline_zh}（北京时间）")
    return "\n".join(lines)


def dingtalk_sign(timestamp_ms: int, secret: str) -> str:
    """DingTalk's `sign` parameter: base64 HMAC-SHA256 of "<timestamp>\\n<secret>" keyed by the secret."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def dingtalk_signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    """The robot URL with `timestamp` and the URL-encoded `sign` appended."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}timestamp={timestamp_ms}&sign={quote_plus(dingtalk_sign(timestamp_ms, secret))}"


def classify_robot_answer(response: httpx.Response, *, rate_limited: int) -> DeliveryResult:
    """A robot's answer: non-2xx by status; a 2xx is delivered only with `errcode` 0."""
    if not 200 <= response.status_code < 300:
        return classify_status(response.status_code)
    try:
        answer = response.json()
        errcode = int(answer.get("errcode", -1))
    except (ValueError, TypeError, AttributeError):
        return failed("robot answered without a JSON errcode", retryable=False, status=response.status_code)
    if errcode == 0:
        return DeliveryResult(ok=True, status=response.status_code, error=None, retryable=False)
    message = f"robot answered errcode {errcode}"
    if answer.get("errmsg"):
        message += f": {answer['errmsg']}"
    return failed(
        message,
        retryable=errcode == rate_limited,
        status=response.status_code,
    )


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class WecomChannel:
    """Posts a markdown message to a WeCom group robot (`.../cgi-bin/webhook/send?key=...`)."""

    name = "wecom"

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def send(self, push: Push) -> DeliveryResult:
        """POST the markdown message once; errcode 45009 (rate limit) is retryable."""
        if not push.channel.url:
            return failed("wecom channel has no url", retryable=False)
        payload = {"msgtype": "markdown", "markdown": {"content": wecom_markdown(message_facts(push))}}
        answer = await post_once(
            self._client,
            push.channel.url,
            body=_encode(payload),
            headers={"Content-Type": "application/json"},
            seconds=self._timeout,
        )
        if isinstance(answer, DeliveryResult):
            return answer
        return classify_robot_answer(answer, rate_limited=WECOM_RATE_LIMITED)


class DingtalkChannel:
    """Posts a markdown message to a DingTalk group robot, signing the URL when a secret is set."""

    name = "dingtalk"

    def __init__(self, client: httpx.AsyncClient, timeout: float, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._timeout = timeout
        self._clock = clock

    async def send(self, push: Push) -> DeliveryResult:
        """POST the markdown message once; errcode 130101 (rate limit) is retryable."""
        url = push.channel.url
        if not url:
            return failed("dingtalk channel has no url", retryable=False)
        if push.channel.secret:
            # DingTalk rejects a timestamp more than an hour old, so each attempt signs afresh.
            url = dingtalk_signed_url(url, push.channel.secret, int(self._clock() * 1000))
        facts = message_facts(push)
        payload = {
            "msgtype": "markdown",
            "markdown": {"title": dingtalk_title(facts), "text": dingtalk_markdown(facts)},
        }
        answer = await post_once(
            self._client,
            url,
            body=_encode(payload),
            headers={"Content-Type": "application/json"},
            seconds=self._timeout,
        )
        if isinstance(answer, DeliveryResult):
            return answer
        return classify_robot_answer(answer, rate_limited=DINGTALK_RATE_LIMITED)
