"""WeCom, DingTalk, email, SMS and in-app channels against real local servers (HTTP on 127.0.0.1,
aiosmtpd): message formats, signatures, retry then success, retry exhaustion, permanent failures."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest

from services.notifier.channels import (
    DingtalkChannel,
    EmailChannel,
    InappChannel,
    SmsChannel,
    UnsupportedChannel,
    WebhookChannel,
    WecomChannel,
    build_channels,
    verify_signature,
)
from services.notifier.domain import (
    ASSIGNED,
    ESCALATED,
    ChannelConfig,
    NoisePolicy,
    Push,
    Recipient,
    RetryPolicy,
    plan_jobs,
    push_for,
)
from services.shared.settings import Settings
from tests.support.retrying import deliver_with_retries
from tests.support.scripted_receiver import ScriptedReceiver, SmtpServer, free_port

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, jitter=0.0)
EVENT_ID = "0b8f7a43-5a43-4e2a-9d8e-1f0c2b3a4d5e"
RESIDENT_REF = "rr-9c1f0e7a"
GATEWAY_KEY = "gw-密钥"
WECOM_OK = {"errcode": 0, "errmsg": "ok"}
NOW = datetime(2024, 6, 3, 6, 0, tzinfo=UTC)
AT_ONCE = NoisePolicy(digest_minutes=0)


@pytest.fixture
async def server() -> AsyncIterator[ScriptedReceiver]:
    receiver = ScriptedReceiver(default=WECOM_OK)
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    mail = SmtpServer()
    mail.start()
    yield mail
    mail.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not intercept 127.0.0.1.
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


def _assigned(config: ChannelConfig, risk: str = "high") -> Push:
    data = {
        "case_id": "c-20240603-0001",
        "status": "offered",
        "tier": "township",
        "station_id": "T-360402101",
        "category": "elderly_care",
        "risk_level": risk,
        "resident_ref": RESIDENT_REF,
        "sequence": 3,
        "worker_id": "w-0001",
        "accept_by": "2024-06-03T06:30:00Z",
    }
    [job] = plan_jobs(
        ASSIGNED, data, EVENT_ID, [Recipient(id="w-0001", kind="user", channels=[config])], now=NOW, noise=AT_ONCE
    )
    return push_for([job], NOW)


def _escalated(config: ChannelConfig) -> Push:
    data = {
        "case_id": "c-20240603-0002",
        "status": "escalated",
        "tier": "county",
        "from_tier": "township",
        "station_id": "C-360402",
        "category": "child_protection",
        "risk_level": "critical",
        "resident_ref": RESIDENT_REF,
        "sequence": 5,
        "reason": "no_capacity",
    }
    recipient = Recipient(id="station-C-360402", kind="station", channels=[config])
    [job] = plan_jobs(ESCALATED, data, EVENT_ID, [recipient], now=NOW, noise=AT_ONCE)
    return push_for([job], NOW)


# --- WeCom ---------------------------------------------------------------------------------------


async def test_wecom_posts_a_markdown_message_with_urgent_risk_highlighted(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    push = _assigned(ChannelConfig(channel="wecom", url=f"{server.url}/cgi-bin/webhook/send?key=k-1"))

    result = await WecomChannel(client, 5.0).send(push)

    assert result.ok and result.status == 200
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/cgi-bin/webhook/send?key=k-1")
    assert request.headers["content-type"] == "application/json"
    assert "养老服务".encode() in request.body  # UTF-8 on the wire
    assert server.json() == {
        "msgtype": "markdown",
        "markdown": {
            "content": "\n".join(
                [
                    '### 新任务（风险：<font color="warning">高</font>）',
                    push.body["text"],
                    '> 个案：<font color="comment">c-20240603-0001</font>',
                    '> 站点：<font color="comment">T-360402101</font>',
                    "> 时限：2024-06-03 14:30（北京时间）",
                ]
            )
        },
    }
    assert RESIDENT_REF.encode() not in request.body


async def test_wecom_does_not_highlight_low_risk(server: ScriptedReceiver, client: httpx.AsyncClient) -> None:
    push = _assigned(ChannelConfig(channel="wecom", url=f"{server.url}/send"), risk="low")

    await WecomChannel(client, 5.0).send(push)

    content = server.json()["markdown"]["content"]
    assert content.startswith("### 新任务（风险：低）\n") and 'color="warning"' not in content


async def test_wecom_rate_limit_is_retried_until_delivered(server: ScriptedReceiver, client: httpx.AsyncClient) -> None:
    server.answer({"errcode": 45009, "errmsg": "api freq out of limit"}, WECOM_OK)

    result, attempts = await deliver_with_retries(
        WecomChannel(client, 5.0), _assigned(ChannelConfig(channel="wecom", url=f"{server.url}/send")), FAST
    )

    assert result.ok and attempts == 2 and len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body


async def test_wecom_gives_up_when_the_rate_limit_outlasts_the_attempts(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    server.answer(*[{"errcode": 45009, "errmsg": "api freq out of limit"}] * 5)

    result, attempts = await deliver_with_retries(
        WecomChannel(client, 5.0), _assigned(ChannelConfig(channel="wecom", url=f"{server.url}/send")), FAST
    )

    assert (result.ok, result.retryable, attempts, len(server.requests)) == (False, True, 3, 3)
    assert result.error == "robot answered errcode 45009: api freq out of limit"


@pytest.mark.parametrize("answer", [{"errcode": 93000, "errmsg": "invalid webhook url"}, {"errcode": 40008}])
async def test_wecom_other_errcodes_fail_without_retry(
    server: ScriptedReceiver, client: httpx.AsyncClient, answer: dict[str, object]
) -> None:
    server.answer(answer)

    result, attempts = await deliver_with_retries(
        WecomChannel(client, 5.0), _assigned(ChannelConfig(channel="wecom", url=f"{server.url}/send")), FAST
    )

    assert (result.ok, result.retryable, attempts) == (False, False, 1)
    assert f"errcode {answer['errcode']}" in (result.error or "")


async def test_wecom_server_error_is_retried(server: ScriptedReceiver, client: httpx.AsyncClient) -> None:
    server.fail(1, 502)

    result, attempts = await deliver_with_retries(
        WecomChannel(client, 5.0), _assigned(ChannelConfig(channel="wecom", url=f"{server.url}/send")), FAST
    )

    assert result.ok and attempts == 2


# --- DingTalk ------------------------------------------------------------------------------------


class SteppingClock:
    """A clock that moves one second per reading, so every attempt has its own timestamp."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _expected_sign(timestamp: str, secret: str) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


async def test_dingtalk_signed_mode_appends_a_verifiable_timestamp_and_sign(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    secret = "SEC0123456789abcdef+/="
    url = f"{server.url}/robot/send?access_token=tok-1"
    push = _escalated(ChannelConfig(channel="dingtalk", url=url, secret=secret))
    server.answer({"errcode": 0, "errmsg": "ok"})

    result = await DingtalkChannel(client, 5.0, clock=SteppingClock(1_717_390_000.0)).send(push)

    assert result.ok
    [request] = server.requests
    parts = urlsplit(request.path)
    assert parts.path == "/robot/send"
    query = parse_qs(parts.query)
    assert query["access_token"] == ["tok-1"]
    assert query["timestamp"] == ["1717390001000"]  # milliseconds
    assert query["sign"] == [_expected_sign("1717390001000", secret)]  # parse_qs undoes the URL-encoding
    raw_sign = next(field for field in parts.query.split("&") if field.startswith("sign="))
    assert raw_sign == f"sign={quote_plus(_expected_sign('1717390001000', secret))}"


async def test_dingtalk_posts_the_markdown_title_and_text(server: ScriptedReceiver, client: httpx.AsyncClient) -> None:
    push = _escalated(ChannelConfig(channel="dingtalk", url=f"{server.url}/robot/send?access_token=t"))

    result = await DingtalkChannel(client, 5.0).send(push)

    assert result.ok
    [request] = server.requests
    assert request.path == "/robot/send?access_token=t"  # no secret: the URL is not signed
    assert server.json() == {
        "msgtype": "markdown",
        "markdown": {
            "title": "上转通知（风险：紧急）",
            "text": "\n".join(
                [
                    "### 上转通知（风险：**紧急**）",
                    "",
                    push.body["text"],
                    "",
                    "- 个案：c-20240603-0002",
                    "- 站点：C-360402",
                ]
            ),
        },
    }
    assert "儿童保护" in push.body["text"] and RESIDENT_REF.encode() not in request.body


async def test_dingtalk_rate_limit_is_retried_with_a_fresh_signature(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    server.answer({"errcode": 130101, "errmsg": "send too fast"}, {"errcode": 0, "errmsg": "ok"})
    push = _assigned(ChannelConfig(channel="dingtalk", url=f"{server.url}/robot/send?access_token=t", secret="s"))

    result, attempts = await deliver_with_retries(
        DingtalkChannel(client, 5.0, clock=SteppingClock(1_700_000_000.0)), push, FAST
    )

    assert result.ok and attempts == 2
    stamps = [parse_qs(urlsplit(r.path).query)["timestamp"][0] for r in server.requests]
    assert stamps == ["1700000001000", "1700000002000"]
    for request, stamp in zip(server.requests, stamps, strict=True):
        assert parse_qs(urlsplit(request.path).query)["sign"] == [_expected_sign(stamp, "s")]


async def test_dingtalk_gives_up_after_the_attempts_and_fails_bad_signatures_at_once(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    channel = DingtalkChannel(client, 5.0)
    push = _assigned(ChannelConfig(channel="dingtalk", url=f"{server.url}/robot/send?access_token=t", secret="s"))
    server.answer(
        *[{"errcode": 130101, "errmsg": "send too fast"}] * 3, {"errcode": 310000, "errmsg": "sign not match"}
    )

    exhausted, attempts = await deliver_with_retries(channel, push, FAST)
    permanent, once = await deliver_with_retries(channel, push, FAST)

    assert (exhausted.ok, exhausted.retryable, attempts) == (False, True, 3)
    assert exhausted.error == "robot answered errcode 130101: send too fast"
    assert (permanent.ok, permanent.retryable, once) == (False, False, 1)
    assert "310000" in (permanent.error or "") and len(server.requests) == 4


async def test_robot_answer_without_errcode_json_is_a_permanent_failure(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    server.answer(None)

    result = await DingtalkChannel(client, 5.0).send(_assigned(ChannelConfig(channel="dingtalk", url=server.url)))

    assert (result.ok, result.retryable) == (False, False)


# --- Email ---------------------------------------------------------------------------------------


def _smtp_settings(port: int) -> Settings:
    return Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_from="notify@caselink.example", smtp_timeout=5.0)


async def test_email_has_plain_and_html_parts_subject_and_delivery_headers(smtp: SmtpServer) -> None:
    push = _assigned(ChannelConfig(channel="email", address="li.juan@station.example"))

    result = await EmailChannel(_smtp_settings(smtp.port)).send(push)

    assert result.ok
    [(mail_from, rcpt_tos)] = smtp.handler.envelopes
    assert (mail_from, rcpt_tos) == ("notify@caselink.example", ["li.juan@station.example"])
    [message] = smtp.handler.messages
    assert message["Subject"] == "[caselink] 新任务（风险：高）c-20240603-0001"
    assert message["X-Caselink-Delivery"] == str(push.delivery_id)
    assert message["Message-ID"] == f"<{push.delivery_id}@caselink.example>"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    plain_text, html_text = plain.get_content(), html.get_content()
    assert push.body["text"] in plain_text and push.body["text_en"] in plain_text
    assert "2024-06-03 14:30" in plain_text and "T-360402101" in plain_text
    assert "<strong>高</strong>" in html_text and "c-20240603-0001" in html_text
    assert RESIDENT_REF not in message.as_string()


async def test_email_html_part_escapes_the_text(smtp: SmtpServer) -> None:
    push = _assigned(ChannelConfig(channel="email", address="w@station.example"))
    push = replace(push, body={**push.body, "text": "<script>alert(1)</script> & 注意", "text_en": 'a "b" <i>'})

    await EmailChannel(_smtp_settings(smtp.port)).send(push)

    [message] = smtp.handler.messages
    html = message.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; 注意" in content and "<script>" not in content
    assert "a &quot;b&quot; &lt;i&gt;" in content


async def test_email_temporary_refusal_is_retried_with_the_same_message_id(smtp: SmtpServer) -> None:
    smtp.handler.refuse(1, "451 4.3.0 Try again later")
    push = _assigned(ChannelConfig(channel="email", address="w@station.example"))

    result, attempts = await deliver_with_retries(EmailChannel(_smtp_settings(smtp.port)), push, FAST)

    assert result.ok and attempts == 2 and smtp.handler.attempts == 2
    [message] = smtp.handler.messages
    assert message["Message-ID"] == f"<{push.delivery_id}@caselink.example>"


async def test_email_gives_up_when_the_server_keeps_deferring(smtp: SmtpServer) -> None:
    smtp.handler.refuse(5, "451 4.3.0 Try again later")

    result, attempts = await deliver_with_retries(
        EmailChannel(_smtp_settings(smtp.port)), _assigned(ChannelConfig(channel="email", address="w@x.example")), FAST
    )

    assert (result.ok, result.retryable, attempts, smtp.handler.attempts) == (False, True, 3, 3)
    assert "451" in (result.error or "")


async def test_email_permanent_refusal_is_not_retried(smtp: SmtpServer) -> None:
    smtp.handler.refuse(1, "554 5.7.1 Message rejected")

    result, attempts = await deliver_with_retries(
        EmailChannel(_smtp_settings(smtp.port)), _assigned(ChannelConfig(channel="email", address="w@x.example")), FAST
    )

    assert (result.ok, result.retryable, attempts) == (False, False, 1)
    assert "554" in (result.error or "")


async def test_email_to_an_unreachable_server_is_retryable() -> None:
    result = await EmailChannel(_smtp_settings(free_port())).send(
        _assigned(ChannelConfig(channel="email", address="w@x.example"))
    )

    assert (result.ok, result.retryable) == (False, True)


async def test_email_without_an_smtp_host_fails_naming_the_setting() -> None:
    result, attempts = await deliver_with_retries(
        EmailChannel(Settings(smtp_host=None)), _assigned(ChannelConfig(channel="email", address="w@x.example")), FAST
    )

    assert (result.ok, result.retryable, attempts) == (False, False, 1)
    assert result.error == "CASELINK_SMTP_HOST is not set"


# --- SMS -----------------------------------------------------------------------------------------


def _sms_settings(url: str | None, **extra: object) -> Settings:
    values: dict[str, object] = {
        "sms_gateway_url": url,
        "sms_gateway_key": GATEWAY_KEY,
        "sms_sign_name": "九江社工",
        "sms_template_task": "SMS_TASK_001",
        "sms_template_escalation": "SMS_ESC_002",
        **extra,
    }
    return Settings.model_validate(values)


async def test_sms_posts_template_and_pii_free_params_signed_with_the_gateway_key(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    server.default = {"code": "OK", "message": "sent"}
    push = _assigned(ChannelConfig(channel="sms", phone="13800138000"))

    result = await SmsChannel(client, _sms_settings(f"{server.url}/sms/send"), 5.0).send(push)

    assert result.ok and result.status == 200
    [request] = server.requests
    assert request.path == "/sms/send"
    assert server.json() == {
        "phone": "13800138000",
        "template_id": "SMS_TASK_001",
        "sign_name": "九江社工",
        "params": {"case": "c-20240603-0001", "deadline": "2024-06-03 14:30", "station": "T-360402101"},
        "delivery_id": str(push.delivery_id),
    }
    assert request.headers["x-caselink-delivery"] == str(push.delivery_id)
    assert verify_signature(request.body, GATEWAY_KEY, request.headers["x-caselink-signature"])
    assert RESIDENT_REF.encode() not in request.body and b"w-0001" not in request.body


async def test_sms_channel_template_overrides_the_purpose_default(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    server.default = {"code": 0}
    push = _escalated(ChannelConfig(channel="sms", phone="13800138000", template_id="SMS_CUSTOM_9"))

    result = await SmsChannel(client, _sms_settings(server.url), 5.0).send(push)

    assert result.ok
    body = server.json()
    assert body["template_id"] == "SMS_CUSTOM_9"
    assert body["params"] == {"case": "c-20240603-0002", "deadline": "尽快", "station": "C-360402"}


async def test_sms_gateway_error_is_retried_until_delivered(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    server.fail(1, 503)
    server.default = {"code": "0"}
    channel = SmsChannel(client, _sms_settings(server.url), 5.0)

    result, attempts = await deliver_with_retries(
        channel, _assigned(ChannelConfig(channel="sms", phone="13800138000")), FAST
    )

    assert result.ok and attempts == 2
    assert len({r.body for r in server.requests}) == 1


async def test_sms_gives_up_after_the_attempts(server: ScriptedReceiver, client: httpx.AsyncClient) -> None:
    server.fail(5, 500)
    channel = SmsChannel(client, _sms_settings(server.url), 5.0)

    result, attempts = await deliver_with_retries(
        channel, _assigned(ChannelConfig(channel="sms", phone="13800138000")), FAST
    )

    assert (result.ok, result.status, result.retryable, attempts) == (False, 500, True, 3)


async def test_sms_rejected_by_the_gateway_code_is_a_permanent_failure(
    server: ScriptedReceiver, client: httpx.AsyncClient
) -> None:
    server.answer({"code": "isv.BUSINESS_LIMIT_CONTROL", "message": "触发流控"})
    channel = SmsChannel(client, _sms_settings(server.url), 5.0)

    result, attempts = await deliver_with_retries(
        channel, _assigned(ChannelConfig(channel="sms", phone="13800138000")), FAST
    )

    assert (result.ok, result.retryable, attempts) == (False, False, 1)
    assert result.error == "gateway answered code isv.BUSINESS_LIMIT_CONTROL: 触发流控"


async def test_sms_without_gateway_or_template_fails_with_a_clear_message(client: httpx.AsyncClient) -> None:
    push = _assigned(ChannelConfig(channel="sms", phone="13800138000"))

    no_gateway = await SmsChannel(client, _sms_settings(None), 5.0).send(push)
    no_template = await SmsChannel(client, _sms_settings("http://127.0.0.1:9", sms_template_task=None), 5.0).send(push)

    assert (no_gateway.ok, no_gateway.retryable) == (False, False)
    assert no_gateway.error == "CASELINK_SMS_GATEWAY_URL is not set"
    assert (no_template.ok, no_template.retryable) == (False, False)
    assert "CASELINK_SMS_TEMPLATE_TASK" in (no_template.error or "")


# --- In-app and wiring ---------------------------------------------------------------------------


async def test_inapp_is_delivered_at_once_by_the_notified_event() -> None:
    result, attempts = await deliver_with_retries(InappChannel(), _assigned(ChannelConfig(channel="inapp")), FAST)

    assert (result.ok, result.error, attempts) == (True, None, 1)


async def test_build_channels_with_settings_offers_every_channel_of_the_network_file(
    client: httpx.AsyncClient,
) -> None:
    channels = build_channels(client, timeout=5.0, settings=Settings())

    assert {name: type(adapter) for name, adapter in channels.items()} == {
        "webhook": WebhookChannel,
        "wecom": WecomChannel,
        "dingtalk": DingtalkChannel,
        "email": EmailChannel,
        "sms": SmsChannel,
        "inapp": InappChannel,
    }
    assert all(adapter.name == name for name, adapter in channels.items())
    assert not isinstance(channels["sms"], UnsupportedChannel)
