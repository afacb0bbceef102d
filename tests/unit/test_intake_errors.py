"""Intake's error answers when the database cannot be reached: every route answers the contract's
JSON 503, not a plain-text 500 (a token's look-up is often the first statement a request runs)."""

from __future__ import annotations

import json
import re
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Header, Query, Request
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError, OperationalError

from services.intake.errors import ApiError, install_error_handlers


class DeclineBody(BaseModel):
    reason: str


async def live_token(request: Request) -> None:
    """A stand-in for intake's look-up of the bearer token: every token is live but `clk_revoked`."""
    if request.headers.get("authorization") == "Bearer clk_revoked":
        raise ApiError(401, "the bearer token is unknown or revoked")


def app_raising(error: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, confirm_caller=live_token)

    @app.get("/v1/cases/c-1")
    async def get_case() -> None:
        raise error

    return app


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused")),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
    ],
    ids=["operational", "refused", "timeout"],
)
async def test_an_unreachable_database_is_a_json_503_on_any_route(error: Exception) -> None:
    transport = httpx.ASGITransport(app=app_raising(error))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.get("/v1/cases/c-1")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "unavailable"
    assert "database is unavailable" in answer.json()["error"]["message"]


async def test_a_database_error_that_is_a_bug_stays_a_server_error() -> None:
    bug = IntegrityError("INSERT", {}, Exception("duplicate key value violates unique constraint"))
    transport = httpx.ASGITransport(app=app_raising(bug), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.get("/v1/cases/c-1")
    assert answer.status_code == 500


def test_openapi_describes_every_422_in_the_shape_the_server_answers() -> None:
    from services.intake.app import create_app
    from services.shared.settings import Settings

    settings = Settings(database_url="postgresql+asyncpg://caselink@127.0.0.1:9/none", kafka_bootstrap="127.0.0.1:9")
    schema = create_app(settings).openapi()  # nothing is started or reached
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text and '"detail"' not in text
    answers = [
        op["responses"]["422"] for ops in schema["paths"].values() for op in ops.values() if "422" in op["responses"]
    ]
    assert len(answers) > 10
    assert all(
        a["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorDocument"} for a in answers
    )
    defined = set(schema["components"]["schemas"])
    referenced = {ref.rsplit("/", 1)[1] for ref in re.findall(r'"\$ref": "([^"]+)"', text)}
    assert referenced <= defined, referenced - defined


def app_with_a_body() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, confirm_caller=live_token)

    @app.post("/v1/cases/c-1/decline")
    async def decline(body: DeclineBody) -> None:
        return None

    return app


async def test_a_body_that_is_not_json_is_an_error_of_the_whole_body_not_of_a_character_offset() -> None:
    app = app_with_a_body()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.post(
            "/v1/cases/c-1/decline",
            content=b'{"reason": "x",,}',
            headers={"Content-Type": "application/json", "Authorization": "Bearer clk_any"},
        )
    assert answer.status_code == 422
    assert [f["field"] for f in answer.json()["error"]["fields"]] == ["$"]


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/v1/referrals", "text/plain", b"hello"),  # 415 for a caller with a token
        ("/v1/referrals", "application/json", b"{not json"),  # 422 for a caller with a token
        ("/v1/cases/c-1/decline", "application/json", b"{not json"),
    ],
    ids=["referral-not-json-type", "referral-garbage", "action-garbage"],
)
async def test_a_request_without_a_token_is_401_whatever_its_body(path: str, content_type: str, body: bytes) -> None:
    from services.intake.app import create_app
    from services.shared.settings import Settings

    settings = Settings(database_url="postgresql+asyncpg://caselink@127.0.0.1:9/none", kafka_bootstrap="127.0.0.1:9")
    transport = httpx.ASGITransport(app=create_app(settings))  # refused before anything is reached
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.post(path, content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "body",
    [b'{"reason": "x",,}', b'{"reason": "\xff\xfe"}', b'{"reason": 7}'],
    ids=["garbage", "not-utf8", "wrong-type"],
)
async def test_a_revoked_token_is_401_whatever_its_body(body: bytes) -> None:
    transport = httpx.ASGITransport(app=app_with_a_body())
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.post(
            "/v1/cases/c-1/decline",
            content=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer clk_revoked"},
        )
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "unauthorized"


async def test_a_body_that_is_not_utf8_is_a_422_of_the_whole_body() -> None:
    transport = httpx.ASGITransport(app=app_with_a_body())
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.post(
            "/v1/cases/c-1/decline",
            content=b'{"reason": "\xff\xfe"}',
            headers={"Content-Type": "application/json", "Authorization": "Bearer clk_any"},
        )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_failed" and "UTF-8" in error["message"]
    assert [f["field"] for f in error["fields"]] == ["$"]


async def test_a_query_or_header_error_names_the_parameter_as_the_client_sends_it() -> None:
    app = FastAPI()
    install_error_handlers(app, confirm_caller=live_token)

    @app.get("/v1/things")
    async def things(
        limit: Annotated[int, Query(ge=1)] = 50,
        key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=5)] = None,
    ) -> None:
        return None

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.get(
            "/v1/things", params={"limit": 0}, headers={"Authorization": "Bearer clk_any", "Idempotency-Key": "x" * 6}
        )
    assert answer.status_code == 422, answer.text
    assert sorted(f["field"] for f in answer.json()["error"]["fields"]) == ["Idempotency-Key", "limit"]
