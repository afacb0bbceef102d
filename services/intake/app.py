"""The intake service: HTTP API and dashboard, and the consumers of caselink.referrals.submitted
and caselink.case.command-results (verdicts on actions)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

from aiokafka import ConsumerRecord
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from faststream.kafka.annotations import KafkaMessage
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.commands import CommandResult
from schemas.referral import KafkaReferralSubmission
from schemas.topics import CASE_COMMAND_RESULTS, REFERRALS_SUBMITTED
from services.intake import actions, handlers, stream, views
from services.intake.access import TokenCache, confirm_caller
from services.intake.api import router as api_router
from services.intake.domain import SubmissionInvalid, kafka_submission_problems, parse_kafka_submission
from services.intake.errors import install_error_handlers
from services.shared.consuming import (
    Delivery,
    MessageConsumer,
    Work,
    batch_subscriber,
    decode_message,
    enqueue_dead_letter,
    merged_polls,
    origin,
    record_id,
)
from services.shared.directory import get_station, get_user
from services.shared.logging import bind_message_context, clear_message_context, get_logger
from services.shared.runtime import Runtime, build_runtime
from services.shared.settings import Settings

STATIC = Path(__file__).parent / "static"
# A message of caselink.referrals.submitted, decoded, or why it could not be.
Submission = KafkaReferralSubmission | SubmissionInvalid

SUBMISSIONS_PER_BATCH = 1000

log = get_logger(__name__)


def register_consumers(runtime: Runtime) -> None:
    """Subscribe intake's two consumers on the runtime's broker: Kafka submissions and the router's
    verdicts on commands. (The case read model needs no consumer: whoever emits a case event writes
    it in the same transaction, see services.shared.case_view.)"""
    settings = runtime.settings
    submissions = MessageConsumer("intake.submissions", runtime.sessions, max_attempts=settings.consumer_max_attempts)
    verdicts = MessageConsumer("intake.command_results", runtime.sessions, max_attempts=settings.consumer_max_attempts)

    async def reject(session: AsyncSession, record: ConsumerRecord, invalid: SubmissionInvalid, *, key: str) -> None:
        await handlers.reject_submission(session, invalid, key=key)
        await enqueue_dead_letter(session, record, consumer=submissions.name, error=f"rejected: {invalid}")

    def accept_one(delivery: Delivery[Submission]) -> Work:
        """The per-message unit of work of one submission (a batch that failed goes through these)."""
        record, submission = delivery.record, delivery.item
        if isinstance(submission, SubmissionInvalid):
            return lambda session: reject(session, record, submission, key=origin(record))

        async def accept(session: AsyncSession) -> None:
            try:
                submitter = await get_user(session, submission.submitted_by)
                room = await get_station(session, submission.room_id)
                if problems := kafka_submission_problems(
                    submission.submitted_by, submission.room_id, submitter=submitter, room=room
                ):
                    raise SubmissionInvalid(problems, submission_id=str(submission.submission_id))
                await handlers.accept_submission(
                    session,
                    submission,
                    submitted_by=submission.submitted_by,
                    idempotency_source="kafka",
                    idempotency_key=str(submission.submission_id),
                    resident_key=settings.resident_ref_key,
                )
            except SubmissionInvalid as invalid:
                await reject(session, record, invalid, key=str(submission.submission_id))

        return accept

    async def accept_batch(session: AsyncSession, batch: list[Delivery[Submission]]) -> None:
        valid = [d for d in batch if not isinstance(d.item, SubmissionInvalid)]
        for delivery in batch:
            if isinstance(delivery.item, SubmissionInvalid):
                await reject(session, delivery.record, delivery.item, key=origin(delivery.record))
        _, refused = await handlers.accept_kafka_submissions(
            session,
            [cast(KafkaReferralSubmission, d.item) for d in valid],
            resident_key=settings.resident_ref_key,
        )
        for position, refusal in refused:
            await reject(session, valid[position].record, refusal.invalid, key=refusal.key)

    @runtime.broker.subscriber(
        REFERRALS_SUBMITTED, **batch_subscriber(SUBMISSIONS_PER_BATCH), **runtime.subscriber_options("caselink-intake")
    )
    async def on_submissions(msg: KafkaMessage) -> None:
        clear_message_context()
        async with merged_polls(msg, linger_ms=settings.consumer_linger_ms, max_records=SUBMISSIONS_PER_BATCH) as batch:
            await accept_records(cast(tuple[ConsumerRecord, ...], batch))

    async def accept_records(records: tuple[ConsumerRecord, ...]) -> None:
        deliveries: list[Delivery[Submission]] = []
        for record in records:
            submission: Submission
            try:
                submission = parse_kafka_submission(record.value)
            except SubmissionInvalid as invalid:
                submission = invalid
            # Claimed per message, not per submission id: a resend or a `caselink dlq replay` of a
            # rejected submission is judged again (an accepted one is a no-op: its submission key exists).
            kind = "rejected" if isinstance(submission, SubmissionInvalid) else "submission"
            deliveries.append(Delivery(record, f"{kind}:{record_id(record)}", submission))
        await submissions.process_batch(deliveries, work=accept_batch, work_one=accept_one)

    @runtime.broker.subscriber(CASE_COMMAND_RESULTS, **runtime.subscriber_options("caselink-intake-commands"))
    async def on_command_result(msg: KafkaMessage) -> None:
        record = cast(ConsumerRecord, msg.raw_message)
        clear_message_context()
        result = await decode_message(verdicts, record, CommandResult)
        if result is None:
            return
        bind_message_context(case_id=result.case_id, event_id=str(result.command_id))
        await verdicts.process(
            record,
            message_id=str(result.command_id),
            work=lambda session: handlers.record_command_result(session, result),
        )


def create_app_from_environment() -> FastAPI:
    """`create_app` in a uvicorn worker process (CASELINK_HTTP_WORKERS > 1): settings and logging
    from the environment, as `caselink intake` has them."""
    from services.shared.logging import configure_logging
    from services.shared.settings import get_settings

    settings = get_settings()
    configure_logging(settings, service="intake")
    return create_app(settings)


def create_app(settings: Settings) -> FastAPI:
    """The runnable intake service (serve with uvicorn)."""
    runtime = build_runtime("intake", settings)
    register_consumers(runtime)
    if settings.resident_ref_key_is_public:
        log.warning(
            "intake.public_resident_ref_key",
            detail="resident_ref is keyed with a public value (fine for development): anyone can reverse it by "
            "trying id numbers. Set CASELINK_RESIDENT_REF_KEY to a secret in production, and keep it.",
        )

    # POST /v1/referrals' group commit: one writer stores what the requests of this process hand it.
    referral_writer = handlers.http_referral_writer(runtime.sessions, resident_key=settings.resident_ref_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        referral_writer.start()
        try:
            yield
        finally:
            # Referrals already handed over are written (or answered 503) while the database is still there.
            await referral_writer.stop()
            await runtime.stop()

    app = FastAPI(
        title="caselink intake",
        version="1",
        description="Referrals in from village rooms; cases, escalations and live events out.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = runtime.sessions
    app.state.runtime = runtime
    app.state.referral_writer = referral_writer
    app.state.token_cache = TokenCache()

    install_error_handlers(app, confirm_caller=confirm_caller)
    app.include_router(api_router)
    app.include_router(actions.router)
    app.include_router(views.router)
    app.include_router(stream.router)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def dashboard() -> FileResponse:
        """The supervisor dashboard (static; signs in with a bearer token)."""
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    if settings.demo_inbox:
        from services.intake.demo_inbox import router as demo_router

        app.include_router(demo_router)
    return app
