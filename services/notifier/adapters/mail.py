"""The email channel: one multipart/alternative message (plain text and HTML) over SMTP."""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from services.notifier.adapters.base import DELIVERED, DeliveryResult, MessageFacts, failed, message_facts
from services.notifier.domain import Push
from services.shared.settings import Settings


def email_subject(facts: MessageFacts) -> str:
    """Purpose and risk first, so a mail list sorts urgent pushes at a glance."""
    return f"[caselink] {facts.purpose_zh}（风险：{facts.risk_zh}）{facts.case_id}"


def email_plain(facts: MessageFacts) -> str:
    """The text/plain part: Chinese, then English, then the case facts."""
    lines = [facts.text, facts.text_en, "", f"个案 / Case: {facts.case_id}", f"站点 / Station: {facts.station}"]
    if facts.deadline_zh:
        lines.append(f"时限 / Deadline: {facts.deadline_zh}（北京时间 / Beijing time）")
    return "\n".join(lines) + "\n"


def email_html(facts: MessageFacts) -> str:
    """The text/html part; every value is escaped."""
    e = html.escape
    risk = f"<strong>{e(facts.risk_zh)}</strong>" if facts.is_urgent else e(facts.risk_zh)
    rows = [("个案 / Case", facts.case_id), ("站点 / Station", facts.station)]
    if facts.deadline_zh:
        rows.append(("时限 / Deadline", f"{facts.deadline_zh}（北京时间 / Beijing time）"))
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return (
        '<!DOCTYPE html><html lang="zh-CN"><body>'
        f"<h3>{e(facts.purpose_zh)}（风险：{risk}）</h3>"
        f'<p>{e(facts.text)}</p><p lang="en">{e(facts.text_en)}</p>'
        f"<table>{table}</table></body></html>"
    )


def build_email(push: Push, *, sender: str, to: str) -> EmailMessage:
    """The message for a push; its Message-ID comes from the delivery id, so a retry is recognisable."""
    facts = message_facts(push)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = email_subject(facts)
    message["Date"] = formatdate(localtime=False)
    domain = sender.rpartition("@")[2] or "caselink"
    message["Message-ID"] = f"<{push.delivery_id}@{domain}>"
    message["X-Caselink-Delivery"] = str(push.delivery_id)
    message.set_content(email_plain(facts))
    message.add_alternative(email_html(facts), subtype="html")
    return message


class EmailChannel:
    """Sends a push as email through the SMTP server in settings (CASELINK_SMTP_*)."""

    name = "email"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, push: Push) -> DeliveryResult:
        """Send once; SMTP 4xx and connection trouble are retryable, 5xx is not."""
        s = self._settings
        if not s.smtp_host:
            return failed("CASELINK_SMTP_HOST is not set", retryable=False)
        if not push.channel.address:
            return failed("email channel has no address", retryable=False)
        message = build_email(push, sender=s.smtp_from, to=push.channel.address)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password,
                start_tls=s.smtp_starttls,
                use_tls=s.smtp_use_tls,
                timeout=s.smtp_timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            return failed(f"SMTP refused the recipient: {detail}", retryable=all(400 <= c < 500 for c in codes))
        except aiosmtplib.SMTPNotSupported as exc:  # e.g. STARTTLS asked of a server without it
            return failed(f"SMTP server does not support it: {exc}", retryable=False)
        except aiosmtplib.SMTPResponseException as exc:
            return failed(f"SMTP answered {exc.code} {exc.message}", retryable=400 <= exc.code < 500)
        except (aiosmtplib.SMTPException, OSError) as exc:
            # Timeouts, refused or dropped connections, TLS trouble: the server may be back later.
            return failed(f"SMTP {type(exc).__name__}: {exc}", retryable=True)
        return DELIVERED
