"""A fixture for tests that run `caselink` commands in-process."""

import logging
from collections.abc import Iterator

import pytest
import structlog

from services.shared.settings import get_settings


@pytest.fixture
def isolated_settings_and_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fresh settings from a clean environment; logging restored afterwards (main() configures it globally)."""
    for name in ("CASELINK_DATABASE_URL", "CASELINK_KAFKA_BOOTSTRAP", "CASELINK_POLICY", "CASELINK_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    structlog_config = structlog.get_config()
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    root.handlers, root.level = handlers, level
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()
