"""The one settings object of caselink: every knob, read from CASELINK_* environment variables."""

from __future__ import annotations

from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def quiet_hours_window(spec: str) -> tuple[time, time] | tuple[None, None]:
    """`"22:00-07:00"` as (start, end) wall-clock times; an empty spec means no quiet hours."""
    if not spec.strip():
        return None, None
    try:
        start, end = (time.fromisoformat(part.strip()) for part in spec.split("-", 1))
    except ValueError as exc:
        raise ValueError(f"quiet hours must look like 22:00-07:00, got {spec!r}") from exc
    return start, end


# Public (it is in this file): a resident_ref made with it can be reversed by trying id numbers.
DEV_RESIDENT_REF_KEY = "caselink-dev-only-resident-key"
# The value deploy/k8s/secret.example.yaml holds until an operator replaces it.
_PLACEHOLDER_PREFIX = "CHANGE-ME"


class Settings(BaseSettings):
    """Configuration shared by every caselink service; see README § Configuration."""

    model_config = SettingsConfigDict(env_prefix="CASELINK_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="postgresql+asyncpg://… ; unset under `caselink dev` = embedded PostgreSQL"
    )
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port[,host:port]; unset under `caselink dev` = embedded Tansu"
    )
    # Apache Kafka wants idempotent producers; Tansu rejects InitProducerId, so the embedded stack turns it off.
    kafka_enable_idempotence: bool = True
    kafka_client_id: str = Field(default="caselink", description="prefix of Kafka client ids; DB application_name")
    kafka_replication_factor: int = Field(default=1, ge=1, description="replicas per topic for `topics create`")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    # TLS of SSL / SASL_SSL (unset files = the system's default CA store and no client certificate).
    kafka_ssl_cafile: Path | None = Field(default=None, description="PEM CA bundle of the brokers' certificates")
    kafka_ssl_certfile: Path | None = Field(default=None, description="PEM client certificate, for mutual TLS")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="PEM key of the client certificate")
    kafka_ssl_check_hostname: bool = Field(default=True, description="check the broker's name against its certificate")
    kafka_linger_ms: int = 5
    # Apache Kafka answers a fetch as soon as records arrive; Tansu only when this much time passed
    # (each hop then waits ~half of it), so the embedded stack uses 20.
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000, description="longest a fetch waits for records")
    kafka_auto_offset_reset: Literal["earliest", "latest"] = "earliest"

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Intake processes behind the one port (uvicorn workers); each also runs intake's consumers,
    # in the same consumer groups, as router replicas do.
    http_workers: int = Field(default=1, ge=1, le=64, description="intake worker processes")

    policy: Path | None = Field(default=None, description="routing policy YAML; unset = the packaged default")
    # Keyed hash of resident identity: events carry resident_ref, never the identity itself.
    resident_ref_key: str = DEV_RESIDENT_REF_KEY

    log_format: Literal["json", "console"] = "json"
    log_level: str = "INFO"

    outbox_batch_size: int = 500
    outbox_poll_interval: float = 1.0
    consumer_max_attempts: int = 5
    consumer_linger_ms: int = Field(
        default=50, ge=0, le=1000, description="how long a busy consumer waits to merge more polls into its batch"
    )
    db_pool_size: int = 10
    # TLS to PostgreSQL. Unset mode = as before: asyncpg's own default (PGSSLMODE, else `prefer`).
    database_ssl_mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None
    database_ssl_rootcert: Path | None = Field(default=None, description="PEM CA bundle of the server's certificate")
    database_ssl_cert: Path | None = Field(default=None, description="PEM client certificate, for certificate login")
    database_ssl_key: Path | None = Field(default=None, description="PEM key of the client certificate")

    router_sweep_interval: float = Field(
        default=1.0, gt=0, description="seconds between the router's deadline sweeps and queue checks"
    )
    router_deadline_grace: float = Field(
        default=10.0,
        ge=0,
        description="seconds after a deadline before the sweep fires it: an accept or resolve sent in time may "
        "still be on its way to the router (one sent after the deadline is judged late all the same)",
    )
    router_catch_up_wait: float = Field(
        default=60.0,
        ge=0,
        description="at start, the longest the sweep waits for the router to read the actions sent while no "
        "router ran, before it fires deadlines that passed meanwhile",
    )

    command_timeout: float = Field(
        default=10.0, gt=0, description="seconds an HTTP action waits for the router's verdict before answering pending"
    )

    webhook_timeout: float = 5.0
    notify_attempts: int = Field(default=4, ge=1, description="sends per channel before the next channel is tried")
    notify_base_delay: float = Field(default=0.5, ge=0, description="seconds before the first retry; doubles each time")
    notify_max_delay: float = Field(default=60.0, gt=0, description="longest wait between two retries, in seconds")
    notify_digest_minutes: int = Field(
        default=10,
        ge=0,
        description="low/medium-risk escalations go to supervisors as one digest per N minutes; 0 = off",
    )
    notify_quiet_hours: str = Field(
        default="", description="Beijing time window like 22:00-07:00 in which non-critical pushes wait; empty = none"
    )
    notify_poll_interval: float = Field(default=0.5, gt=0, description="seconds between looks for due pushes")
    notify_max_in_flight: int = Field(default=200, ge=1, description="pushes one notifier sends at the same time")

    @field_validator("notify_quiet_hours")
    @classmethod
    def _quiet_hours_are_a_window(cls, value: str) -> str:
        start, end = quiet_hours_window(value)
        if start is not None and start == end:
            raise ValueError("quiet hours need a start and a different end, like 22:00-07:00")
        return value

    # Email channel (SMTP via aiosmtplib). Unset host = email pushes fail, naming CASELINK_SMTP_HOST.
    smtp_host: str | None = Field(default=None, description="SMTP server of the email channel; unset = no email")
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = Field(default=False, description="upgrade the plain connection with STARTTLS")
    smtp_use_tls: bool = Field(default=False, description="implicit TLS from the first byte (usually port 465)")
    smtp_from: str = "caselink@localhost"
    smtp_timeout: float = Field(default=10.0, gt=0, description="seconds one SMTP send may take in all")

    # SMS channel: a generic HTTP gateway. Unset URL = SMS pushes fail, naming CASELINK_SMS_GATEWAY_URL.
    sms_gateway_url: str | None = Field(default=None, description="SMS gateway endpoint; unset = no SMS")
    sms_gateway_key: str | None = Field(default=None, description="HMAC key signing gateway requests")
    sms_sign_name: str = Field(default="caselink", description="the SMS signature (签名) registered at the gateway")
    sms_template_task: str | None = None
    sms_template_escalation: str | None = None
    sms_template_warning: str | None = None

    demo_inbox: bool = Field(default=False, description="serve /dev/inbox, the demo network's webhook sink")

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str | None) -> str | None:
        """A PostgreSQL URL for asyncpg; the plain `postgresql://` and `postgres://` forms are taken too."""
        if value is None or not value.strip():
            return None
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+asyncpg://" + value.removeprefix(plain)
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must be postgresql+asyncpg://user:password@host:port/database")
        return value

    @field_validator(
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "database_ssl_mode",
        "database_ssl_rootcert",
        "database_ssl_cert",
        "database_ssl_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """`CASELINK_X=` (empty) means unset, not the current directory."""
        return None if isinstance(value, str) and not value.strip() else value

    def require_infrastructure(self) -> tuple[str, str]:
        """Return (database_url, kafka_bootstrap), or fail naming the missing variable."""
        missing = [
            name
            for name, value in (
                ("CASELINK_DATABASE_URL", self.database_url),
                ("CASELINK_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
            )
            if not value
        ]
        if missing:
            raise SystemExit(f"{' and '.join(missing)} must be set (or use `caselink dev` for embedded infrastructure)")
        assert self.database_url and self.kafka_bootstrap
        return self.database_url, self.kafka_bootstrap

    @property
    def resident_ref_key_is_public(self) -> bool:
        """Whether resident_refs are made with a key anyone can read: the development default, or the
        example secret's placeholder left unchanged."""
        return self.resident_ref_key == DEV_RESIDENT_REF_KEY or self.resident_ref_key.startswith(_PLACEHOLDER_PREFIX)

    def require_database(self) -> str:
        """The database URL, or fail naming CASELINK_DATABASE_URL (for database-only commands)."""
        return self._required("CASELINK_DATABASE_URL", self.database_url)

    def require_kafka(self) -> str:
        """The bootstrap servers, or fail naming CASELINK_KAFKA_BOOTSTRAP (for broker-only commands)."""
        return self._required("CASELINK_KAFKA_BOOTSTRAP", self.kafka_bootstrap)

    @staticmethod
    def _required(name: str, value: str | None) -> str:
        if not value:
            raise SystemExit(f"{name} must be set (or use `caselink dev` for embedded infrastructure)")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
