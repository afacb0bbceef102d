"""HTTP errors in the contract's shape: {"error": {"code", "message", "fields"}} — never a 500 for bad input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.referral import ROOT_FIELD, FieldError, field_errors
from services.shared.db import is_transient_db_error

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_failed",
          503: "unavailable"}  # fmt: skip


class ErrorBody(BaseModel):
    code: str = Field(examples=["conflict"])
    message: str = Field(examples=["cannot accept a case that is accepted"])
    fields: list[FieldError] = Field(default_factory=list, description="the offending fields, for 422")


class ErrorDocument(BaseModel):
    """Every 4xx answer: {"error": {"code", "message", "fields"}}."""

    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries in the contract's error shape."""
    described = {
        401: "no token, or an unknown or revoked one",
        403: "the caller's role or position does not allow this",
        404: "not found, or not visible to the caller",
        409: "the case's status forbids the action",
        413: "the body is larger than the route accepts",
        415: "the body is not JSON (`Content-Type: application/json`)",
        422: "invalid input; `fields` names each field",
    }
    return {status: {"model": ErrorDocument, "description": described[status]} for status in statuses}


class ApiError(Exception):
    """An error answer with a status, a machine code and a human message."""

    def __init__(self, status: int, message: str, *, code: str | None = None, fields: list[FieldError] = ()) -> None:  # type: ignore[assignment]
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.fields = list(fields)


def error_body(code: str, message: str, fields: list[FieldError] | None = None) -> dict[str, Any]:
    """The contract's error document."""
    return {"error": {"code": code, "message": message, "fields": [f.model_dump() for f in fields or []]}}


def install_error_handlers(app: FastAPI, *, confirm_caller: Callable[[Request], Awaitable[None]]) -> None:
    """Answer every error, including FastAPI's own, in the contract's shape (and say so in /openapi.json).

    Every refusal of a /v1 request other than 401 first has `confirm_caller` check its bearer
    token, so a bad token gets 401 whatever else is wrong with the request.
    """
    _describe_validation_errors_as_they_are(app)

    async def refuse(request: Request, status: int, body: dict[str, Any], **kwargs: Any) -> JSONResponse:
        try:
            await confirm_caller(request)
        except ApiError as exc:
            return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status)
        except (SQLAlchemyError, OSError):
            pass  # the token cannot be looked up now: the refusal itself still holds
        return JSONResponse(body, status_code=status, **kwargs)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = error_body(exc.code, exc.message, exc.fields)
        if exc.status == 401 or exc.status >= 500:
            return JSONResponse(body, status_code=exc.status)
        return await refuse(request, exc.status, body)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if missing_bearer(request):  # FastAPI judges a body it cannot parse before any dependency
            return JSONResponse(error_body("unauthorized", NO_BEARER), status_code=401)
        # FastAPI locates body errors under "body"; clients know the fields by their own names. A body
        # that is not JSON at all is located at a character offset, which is no field: the whole body.
        details = [{**d, "loc": _field_of(d)} for d in exc.errors()]
        fields = field_errors(details)
        message = "the request is invalid: " + "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
        return await refuse(request, 422, error_body("validation_failed", message, fields))

    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(OSError)  # ConnectionError, TimeoutError: a connection that could not be made
    async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        # Any route, not only those that expect it: a token's look-up is often the first statement.
        if not is_transient_db_error(exc):
            raise exc  # a bug: the server's 500, logged with its traceback
        message = "the database is unavailable; try again shortly (a referral with the same key is safe)"
        return JSONResponse(error_body("unavailable", message), status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
            # FastAPI's answer to a JSON body it could not even decode (not UTF-8): a 422 on the body.
            fields = [FieldError(field=ROOT_FIELD, message=_NOT_UTF8)]
            return await refuse(request, 422, error_body("validation_failed", _NOT_UTF8, fields))
        body = error_body(_CODES.get(exc.status_code, "error"), str(exc.detail))
        if exc.status_code == 401 or not 400 <= exc.status_code < 500:
            return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
        return await refuse(request, exc.status_code, body, headers=exc.headers)


_UNPARSABLE_BODY = "There was an error parsing the body"
_NOT_UTF8 = "the body is not JSON text: it is not valid UTF-8"


NO_BEARER = "an Authorization: Bearer <token> header is required"


def missing_bearer(request: Request) -> bool:
    """A /v1 request without a bearer token: 401 comes before anything said about its body."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return request.url.path.startswith("/v1/") and (scheme.lower() != "bearer" or not token.strip())


def _field_of(detail: dict[str, Any]) -> tuple[Any, ...]:
    """Where a request error is, as the client names it: without FastAPI's leading part of the
    request ("body", "query", "path", "header"), so `status` and `Idempotency-Key` are named as the
    route's own refusals name them."""
    loc = tuple(detail.get("loc", ()))
    if detail.get("type") == "json_invalid":
        return ()  # ("body", 11): a character offset of text that is not JSON
    return loc[1:] if loc[:1] in _REQUEST_PARTS else loc


_REQUEST_PARTS = {("body",), ("query",), ("path",), ("header",), ("cookie",)}


def _describe_validation_errors_as_they_are(app: FastAPI) -> None:
    """FastAPI documents a 422 of its own shape (`HTTPValidationError`, `{"detail": [...]}`) on every
    route with parameters; the handler above answers the contract's `ErrorDocument` instead."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        reference = {"$ref": "#/components/schemas/ErrorDocument"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                answer = operation.get("responses", {}).get("422")
                if answer is not None:
                    answer["content"] = {"application/json": {"schema": reference}}
                    if answer.get("description") == "Validation Error":
                        answer["description"] = "invalid input; `fields` names each field"
        # Normally there already (error_responses names it); a bare app gets it and its parts here.
        document = ErrorDocument.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in {**document.pop("$defs", {}), "ErrorDocument": document}.items():
            components.setdefault(name, definition)
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
