"""The one logging setup: structlog, JSON in production, readable in a terminal.

Handlers bind `case_id` / `event_id` with `bind_message_context`; never bind or log resident data.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from services.shared.settings import Settings


def configure_logging(settings: Settings, *, service: str) -> None:
    """Route stdlib and structlog output through one renderer, tagged with the service name."""
    level = logging.getLevelName(settings.log_level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks as plain text, never with local variables: a frame's locals hold residents' data
    # and bearer tokens (rich's default shows them, and takes seconds to render a large one).
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # a library's logged exception: its traceback as text
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # Library chatter (per-request access logs, rebalances) is noise at INFO under load.
    for noisy in ("aiokafka", "httpx", "uvicorn.access", "faststream.access", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def bind_message_context(**ids: str | None) -> None:
    """Bind identifiers (case_id, event_id, submission_id) to every log line of the current message."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v is not None})


def clear_message_context() -> None:
    """Forget the identifiers bound for the previous message (keeps the service tag)."""
    structlog.contextvars.unbind_contextvars("case_id", "event_id", "submission_id")


def get_logger(name: str) -> Any:
    """A structlog logger for a module."""
    return structlog.get_logger(name)
