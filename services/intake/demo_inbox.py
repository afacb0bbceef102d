"""The demo network's webhook sink (only under `caselink dev`): shows the pushes a worker would get."""

from __future__ import annotations

from collections import deque
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.notifier.channels import verify_signature
from services.shared.demo import demo_secret

router = APIRouter(prefix="/dev/inbox", include_in_schema=False)
_received: deque[dict[str, Any]] = deque(maxlen=500)


@router.post("/{recipient}")
async def receive_push(recipient: str, request: Request) -> JSONResponse:
    """Accept a signed push for a demo user or station and keep it for `GET /dev/inbox`."""
    body = await request.body()
    signature = request.headers.get("X-Caselink-Signature", "")
    if not verify_signature(body, demo_secret(recipient), signature):
        return JSONResponse({"error": {"code": "bad_signature", "message": "signature mismatch", "fields": []}}, 401)
    _received.appendleft(
        {"recipient": recipient, "delivery": request.headers.get("X-Caselink-Delivery"), "push": await request.json()}
    )
    return JSONResponse({"ok": True})


@router.get("")
async def list_pushes(recipient: str | None = None) -> list[dict[str, Any]]:
    """The latest pushes the demo network received, newest first."""
    return [item for item in _received if recipient in (None, item["recipient"])]
