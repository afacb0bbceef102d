"""The one settings object (CASELINK_* environment variables) and the one logging setup (structlog JSON)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from services.shared.logging import bind_message_context, clear_message_context, configure_logging, get_logger
from services.shared.settings import Settings, get_settings

DATABASE_URL = "postgresql+asyncpg://caselink:secret@db.example.org:5432/caselink"
BOOTSTRAP = "kafka-1.example.org:9092,kafka-2.example.org:9092"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CASELINK_* variable of the developer's shell leaks in; the cached settings are re-read."""
    for name in list(os.environ):
        if name.startswith("CASELINK_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back so other tests log as before."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers, root.level = handlers, level
    structlog.configure(**config)
    structlog.contextvars.clear_contextvars()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- settings -------------------------------------------------------------------------------


def test_settings_read_infrastructure_from_caselink_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("CASELINK_KAFKA_BOOTSTRAP", BOOTSTRAP)
    monkeypatch.setenv("CASELINK_KAFKA_ENABLE_IDEMPOTENCE", "false")

    settings = Settings()

    assert settings.database_url == DATABASE_URL
    assert settings.kafka_bootstrap == BOOTSTRAP
    assert settings.kafka_enable_idempotence is False


def test_settings_read_service_knobs_with_their_types(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CASELINK_HTTP_PORT", "9090")
    monkeypatch.setenv("CASELINK_POLICY", str(tmp_path / "policy.yaml"))
    monkeypatch.setenv("CASELINK_RESIDENT_REF_KEY", "production-key")
    monkeypatch.setenv("CASELINK_LOG_FORMAT", "console")
    monkeypatch.setenv("CASELINK_OUTBOX_POLL_INTERVAL", "0.25")
    monkeypatch.setenv("CASELINK_DEMO_INBOX", "true")

    settings = Settings()

    assert settings.http_port == 9090
    assert settings.policy == tmp_path / "policy.yaml"
    assert settings.resident_ref_key == "production-key"
    assert settings.log_format == "console"
    assert settings.outbox_poll_interval == 0.25
    assert settings.demo_inbox is True


def test_settings_defaults_suit_a_developer_machine() -> None:
    settings = Settings()

    assert settings.database_url is None and settings.kafka_bootstrap is None
    assert settings.kafka_enable_idempotence is True
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert settings.policy is None
    assert settings.log_format == "json"
    assert settings.demo_inbox is False


def test_settings_ignore_variables_without_the_caselink_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("CASELINK_NOT_A_SETTING", "whatever")

    assert Settings().database_url is None


def test_settings_reject_an_unknown_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_LOG_FORMAT", "xml")

    with pytest.raises(ValidationError, match="log_format"):
        Settings()


def test_get_settings_is_read_once_until_the_cache_is_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("CASELINK_HTTP_PORT", "9191")

    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().http_port == 9191


def test_require_infrastructure_names_both_missing_variables() -> None:
    with pytest.raises(SystemExit) as caught:
        Settings().require_infrastructure()

    message = str(caught.value.code)
    assert "CASELINK_DATABASE_URL" in message
    assert "CASELINK_KAFKA_BOOTSTRAP" in message
    assert "caselink dev" in message


def test_require_infrastructure_names_only_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_DATABASE_URL", DATABASE_URL)

    with pytest.raises(SystemExit) as caught:
        Settings().require_infrastructure()

    message = str(caught.value.code)
    assert "CASELINK_KAFKA_BOOTSTRAP" in message
    assert "CASELINK_DATABASE_URL" not in message
    assert DATABASE_URL not in message


def test_require_infrastructure_returns_database_url_and_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("CASELINK_KAFKA_BOOTSTRAP", BOOTSTRAP)

    assert Settings().require_infrastructure() == (DATABASE_URL, BOOTSTRAP)


# --- logging --------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_json_logs_carry_the_service_and_the_bound_case(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"), service="router")
    log = get_logger("tests.routing")

    bind_message_context(case_id="c-0001", event_id="e-0001", submission_id=None)
    log.info("router.case_routed", rule="crisis")

    [line] = _json_lines(capfd.readouterr().err)
    assert line["event"] == "router.case_routed"
    assert line["service"] == "router"
    assert line["case_id"] == "c-0001"
    assert line["event_id"] == "e-0001"
    assert "submission_id" not in line
    assert line["rule"] == "crisis"
    assert line["level"] == "info"
    assert "timestamp" in line


@pytest.mark.usefixtures("restore_logging")
def test_clearing_the_message_context_forgets_the_case_but_keeps_the_service(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging(Settings(log_format="json"), service="notifier")
    log = get_logger("tests.notifying")

    bind_message_context(case_id="c-0001", event_id="e-0001")
    log.info("first message")
    clear_message_context()
    log.info("second message")

    first, second = _json_lines(capfd.readouterr().err)
    assert first["case_id"] == "c-0001"
    assert "case_id" not in second and "event_id" not in second
    assert second["service"] == "notifier"


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_logging_goes_through_the_same_json_renderer(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"), service="intake")
    bind_message_context(case_id="c-0002")

    logging.getLogger("tests.stdlib").warning("database slow: %s ms", 250)

    [line] = _json_lines(capfd.readouterr().err)
    assert line["event"] == "database slow: 250 ms"
    assert line["level"] == "warning"
    assert line["service"] == "intake"
    assert line["case_id"] == "c-0002"


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_logged_exception_shows_its_traceback_but_never_the_frames_local_values(
    log_format: str, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging(Settings(log_format=log_format), service="intake")
    values = ("王秀英", "clk_secret-bearer-token")  # in a frame's locals, not in a source line

    def store(resident_name: str, token: str) -> None:
        raise RuntimeError("the database went away")

    for logger in (logging.getLogger("uvicorn.error").exception, get_logger("tests.errors").exception):
        try:
            store(*values)
        except RuntimeError:
            logger("request failed")
    err = capfd.readouterr().err
    assert err.count("RuntimeError: the database went away") == 2 and err.count("in store") == 2
    assert "王秀英" not in err and "clk_secret" not in err
    assert "<traceback object" not in err


@pytest.mark.usefixtures("restore_logging")
def test_log_level_filters_lines_and_quiets_noisy_libraries(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json", log_level="info"), service="router")

    get_logger("tests.level").debug("too detailed")
    logging.getLogger("aiokafka").info("rebalance chatter")
    get_logger("tests.level").warning("kept")

    lines = _json_lines(capfd.readouterr().err)
    assert [line["event"] for line in lines] == ["kept"]


@pytest.mark.usefixtures("restore_logging")
def test_configuring_again_starts_from_a_clean_context(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging(Settings(log_format="json"), service="router")
    bind_message_context(case_id="c-0003")
    configure_logging(Settings(log_format="json"), service="intake")

    get_logger("tests.reconfigure").info("fresh")

    [line] = _json_lines(capfd.readouterr().err)
    assert line["service"] == "intake"
    assert "case_id" not in line


@pytest.mark.parametrize(
    ("key", "public"),
    [
        (None, True),  # the development default
        ("CHANGE-ME-to-a-long-random-secret", True),  # deploy/k8s/secret.example.yaml, left as it is
        ("9f2c6e0b4d7a1e3f5a8c2b6d0e4f7a1c", False),
    ],
)
def test_a_resident_ref_key_anyone_can_read_is_recognised(key: str | None, public: bool) -> None:
    settings = Settings() if key is None else Settings(resident_ref_key=key)
    assert settings.resident_ref_key_is_public is public
