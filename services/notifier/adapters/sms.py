"""The SMS channel: a generic HTTP SMS gateway taking a template id and parameters, the shape
Chinese SMS gateways (Aliyun, Tencent Cloud and their resellers) use behind a small relay."""

from __future__ import annotations

import httpx

from services.notifier.adapters.base import (
    DeliveryResult,
    classify_status,
    encode_body,
    failed,
    message_facts,
    post_once,
    sign,
)
from services.notifier.domain import Push
from services.shared.settings import Settings

# Template variables are short at every Chinese gateway (20 characters at Aliyun).
PARAM_LIMIT = 20
SUCCESS_CODES = ("0", "ok", "OK", 0)


def sms_payload(push: Push, *, template_id: str, sign_name: str) -> dict[str, object]:
    """The gateway request: phone, template, signature name and PII-free template parameters."""
    facts = message_facts(push)
    # Parameters carry case id, deadline and station only: never a name or any resident data.
    params = {
        "case": facts.case_id[-PARAM_LIMIT:],
        "deadline": facts.deadline_zh or "尽快",
        "station": facts.station[:PARAM_LIMIT],
    }
    return {
        "phone": push.channel.phone,
        "template_id": template_id,
        "sign_name": sign_name,
        "params": params,
        "delivery_id": str(push.delivery_id),
    }


class SmsChannel:
    """POSTs a template SMS request to the gateway in settings (CASELINK_SMS_GATEWAY_URL).

    The JSON body is signed like a webhook: `X-Caselink-Signature: sha256=<hex HMAC-SHA256 of the
    raw body keyed by CASELINK_SMS_GATEWAY_KEY>`, with `X-Caselink-Delivery` for deduplication.
    A 2xx is delivered unless its JSON answer carries a `code` other than 0 / "0" / "OK".
    """

    name = "sms"

    def __init__(self, client: httpx.AsyncClient, settings: Settings, timeout: float) -> None:
        self._client = client
        self._settings = settings
        self._timeout = timeout

    def template_for(self, push: Push) -> str | None:
        """The channel's own template id, else the purpose's default from settings."""
        s = self._settings
        defaults = {
            "task": s.sms_template_task,
            "escalation": s.sms_template_escalation,
            "warning": s.sms_template_warning,
        }
        return push.channel.template_id or defaults.get(push.purpose)

    async def send(self, push: Push) -> DeliveryResult:
        """POST the template request once and classify the gateway's answer."""
        s = self._settings
        if not s.sms_gateway_url:
            return failed("CASELINK_SMS_GATEWAY_URL is not set", retryable=False)
        if not push.channel.phone:
            return failed("sms channel has no phone", retryable=False)
        template_id = self.template_for(push)
        if not template_id:
            variable = f"CASELINK_SMS_TEMPLATE_{push.purpose.upper()}"
            return failed(f"no SMS template for '{push.purpose}': set {variable} or template_id", retryable=False)
        payload = sms_payload(push, template_id=template_id, sign_name=s.sms_sign_name)
        body = encode_body(payload)
        headers = {"Content-Type": "application/json", "X-Caselink-Delivery": str(push.delivery_id)}
        if s.sms_gateway_key:
            headers["X-Caselink-Signature"] = sign(body, s.sms_gateway_key)
        answer = await post_once(self._client, s.sms_gateway_url, body=body, headers=headers, seconds=self._timeout)
        if isinstance(answer, DeliveryResult):
            return answer
        result = classify_status(answer.status_code)
        if not result.ok:
            return result
        return _gateway_verdict(answer) or result


def _gateway_verdict(response: httpx.Response) -> DeliveryResult | None:
    # Gateways answer 200 and report a rejected template or number in a `code` field.
    try:
        answer = response.json()
    except ValueError:
        return None
    if not isinstance(answer, dict) or "code" not in answer or answer["code"] in SUCCESS_CODES:
        return None
    detail = answer.get("message") or answer.get("msg") or ""
    error = f"gateway answered code {answer['code']}" + (f": {detail}" if detail else "")
    return failed(error, retryable=False, status=response.status_code)
