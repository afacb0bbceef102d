"""The people-facing HTTP API (docs/api-v1-people.md) as integration tests drive it: one bearer token
per demo user, cases submitted and followed until they are offered, every case a test opened closed
again afterwards (so the workers' loads return to what they were), and a Server-Sent Events reader."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

# 十里社区社工室 under 十里街道 (T-360402101), with its own worker; medium risk routes to the township.
ROOM = "V-360402101001"
ROOM_WORKER = "w-0031"
# A supervisor above every demo station: reads any case, closes what the tests opened.
CITY_SUPERVISOR = "s-0001"
RISK_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}


class CommandLine(Protocol):
    def cli(self, *args: str) -> str: ...

    def tokens(self, users: Iterable[str]) -> dict[str, str]: ...


class Tokens:
    """A bearer token per user, made once with `caselink token create`."""

    def __init__(self, stack: CommandLine) -> None:
        self._stack = stack
        self._tokens: dict[str, str] = {}

    def prefetch(self, users: Iterable[str]) -> None:
        """Create the tokens of these users in one process (a `caselink` run each is a process start)."""
        missing = sorted(set(users) - set(self._tokens))
        if missing:
            self._tokens.update(self._stack.tokens(missing))

    def __getitem__(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = self._stack.cli("token", "create", "--user", user)
        return self._tokens[user]

    def headers(self, user: str | None) -> dict[str, str]:
        """The Authorization header of this user (none for None)."""
        return {} if user is None else {"Authorization": f"Bearer {self[user]}"}


def referral(**overrides: Any) -> dict[str, Any]:
    """A valid referral from ROOM (CONTRACT §3), medium risk unless overridden."""
    body = {
        "room_id": ROOM,
        "category": "elderly_care",
        "risk_level": "medium",
        "summary": "独居老人，行动不便，子女在外地，需要上门探访",
        "resident": {"name": "陈桂英", "birth_year": 1946, "gender": "female", "address": "十里社区5栋1单元202"},
        "consent": {"given": True, "scope": "service", "recorded_by": ROOM_WORKER},
    }
    return body | overrides


def event_name(event: dict[str, Any]) -> str:
    """`assigned` for `caselink.case.assigned.v1`."""
    return str(event["type"]).removeprefix("caselink.case.").removesuffix(".v1")


def timeline_names(case: dict[str, Any]) -> list[str]:
    """The names of a case's events, in sequence order."""
    return [event_name(e) for e in sorted(case["timeline"], key=lambda e: e["data"]["sequence"])]


def is_offered(case: dict[str, Any]) -> bool:
    """Offered to a worker, and the read model has the `assigned` event that says so."""
    return case["status"] == "offered" and bool(case["assignee_id"]) and "assigned" in timeline_names(case)


def error_fields(response: httpx.Response) -> set[str]:
    """The names in an error's `fields` (`status`, `worker_id`: never FastAPI's `query.status`)."""
    return {f["field"] for f in response.json()["error"]["fields"]}


def assert_error(answer: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is an error of this status in the contract's shape; return its `error`."""
    assert answer.status_code == status, f"{answer.request.method} {answer.request.url}: {answer.text}"
    error = answer.json()["error"]
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["message"], str)
    assert isinstance(error["fields"], list)
    if code is not None:
        assert error["code"] == code
    return dict(error)


def assert_applied(answer: httpx.Response, case_id: str, *statuses: str) -> dict[str, Any]:
    """A 202 whose verdict is `applied`, leaving the case in one of these statuses."""
    assert answer.status_code == 202, f"{answer.request.method} {answer.request.url}: {answer.text}"
    body = answer.json()
    assert body["case_id"] == case_id and body["command_id"]
    assert body["outcome"] == "applied", body
    assert body["status"] in statuses, body
    return dict(body)


def events_named(case: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e["data"] for e in case["timeline"] if event_name(e) == name]


@dataclass
class Api:
    """An httpx client that acts as demo users and remembers the cases it opened."""

    client: httpx.AsyncClient
    tokens: Tokens
    opened: list[str] = field(default_factory=list)

    async def get(self, path: str, *, user: str | None, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.tokens.headers(user), **kwargs)

    async def post(self, path: str, *, user: str | None, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, headers=self.tokens.headers(user), **kwargs)

    async def act(
        self, case_id: str, action: str, *, user: str | None, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """POST /v1/cases/{id}/{action}, with a JSON body when one is given."""
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        return await self.post(f"/v1/cases/{case_id}/{action}", user=user, **kwargs)

    async def case(self, case_id: str, *, user: str = CITY_SUPERVISOR) -> dict[str, Any]:
        answer = await self.get(f"/v1/cases/{case_id}", user=user)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    async def submit(self, *, user: str = ROOM_WORKER, **overrides: Any) -> str:
        """Submit a referral; the case is closed again when the test ends."""
        headers = self.tokens.headers(user) | {"Idempotency-Key": f"people-api-{uuid.uuid4()}"}
        answer = await self.client.post("/v1/referrals", json=referral(**overrides), headers=headers)
        assert answer.status_code == 202, answer.text
        case_id = str(answer.json()["case_id"])
        self.opened.append(case_id)
        return case_id

    async def wait_for_case(
        self, case_id: str, predicate: Callable[[dict[str, Any]], bool], *, within: float = 30.0
    ) -> dict[str, Any]:
        """Poll the case (as the city supervisor) until `predicate(case)` holds; return it."""
        deadline = time.monotonic() + within
        case: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = await self.get(f"/v1/cases/{case_id}", user=CITY_SUPERVISOR)
            if answer.status_code == 200:
                case = answer.json()
                if predicate(case):
                    return case
            await asyncio.sleep(0.1)
        raise AssertionError(f"case {case_id} never got there; last seen: {json.dumps(case, ensure_ascii=False)}")

    async def open_case(self, **overrides: Any) -> dict[str, Any]:
        """Submit a referral and wait until it is offered to a worker; return the case."""
        case_id = await self.submit(**overrides)
        return await self.wait_for_case(case_id, is_offered)

    async def close_opened(self) -> None:
        """Close every case this client opened, as the city supervisor (a closed case frees its worker)."""
        for case_id in self.opened:
            answer = await self.act(case_id, "close", user=CITY_SUPERVISOR, body={"reason": "test finished"})
            assert answer.status_code in (202, 409), answer.text  # 409: the test closed it already
        self.opened.clear()


@dataclass
class SseMessage:
    """One Server-Sent Events message."""

    id: str | None
    event: str | None
    data: str

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))

    @property
    def subject(self) -> str | None:
        """The case id of a `case` message."""
        return self.json().get("subject") if self.event == "case" else None


class EventStream:
    """`GET /v1/stream`, read in the background while the test goes on; messages collect in order."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str], *, path: str = "/v1/stream") -> None:
        self.messages: list[SseMessage] = []
        self._path = path
        self.status: int | None = None
        self._client = client
        self._headers = headers | {"Accept": "text/event-stream"}
        self._opened = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    @property
    def closed(self) -> bool:
        """Whether the stream has ended: the server finished it, or the connection broke."""
        return self._task is not None and self._task.done()

    async def _read(self) -> None:
        timeout = httpx.Timeout(10.0, read=60.0)
        try:
            async with self._client.stream("GET", self._path, headers=self._headers, timeout=timeout) as response:
                self.status = response.status_code
                self._opened.set()
                if response.status_code != 200:
                    return
                fields: dict[str, str] = {}
                data: list[str] = []
                async for line in _lines_until_broken(response):
                    if line == "":
                        if data:
                            self.messages.append(SseMessage(fields.get("id"), fields.get("event"), "\n".join(data)))
                            self._arrived.set()
                        fields, data = {}, []
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "data":
                            data.append(value)
                        else:
                            fields[name] = value
        finally:
            self._opened.set()

    def of(self, case_id: str) -> list[SseMessage]:
        """The `case` messages about one case, in the order they came."""
        return [m for m in self.messages if m.subject == case_id]

    async def wait_for(self, predicate: Callable[[list[SseMessage]], bool], *, within: float = 20.0) -> None:
        """Wait until `predicate(messages)` holds."""
        deadline = time.monotonic() + within
        while not predicate(self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._task is not None and self._task.done()):
                seen = [(m.id, m.event, m.subject) for m in self.messages]
                raise AssertionError(f"the stream never showed it (status {self.status}); saw {seen}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass


async def _lines_until_broken(response: httpx.Response) -> AsyncIterator[str]:
    """The response's lines; a connection the server breaks off simply ends them (see `closed`)."""
    try:
        async for line in response.aiter_lines():
            yield line
    except httpx.TransportError:
        return
