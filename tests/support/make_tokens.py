"""`python -m tests.support.make_tokens USER...`: a bearer token for each user, printed as one JSON
object. It makes them the way `caselink token create` makes one (`create_token`, only the hash
stored), but in one process and one transaction: tests need dozens of tokens, and a dozen `caselink`
processes started side by side on two loaded cores ran past their 60 s in a fresh-clone CI run."""

from __future__ import annotations

import asyncio
import json
import sys

from services.shared.db import create_engine, session_factory, transaction
from services.shared.directory import create_token
from services.shared.settings import Settings


async def make_tokens(users: list[str]) -> dict[str, str]:
    engine = create_engine(Settings())
    try:
        async with transaction(session_factory(engine)) as session:
            return {user: await create_token(session, user_id=user) for user in users}
    finally:
        await engine.dispose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(make_tokens(sys.argv[1:]))))
