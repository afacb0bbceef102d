"""The reliability and security suite runs on the integration tests' `caselink dev` stack.

Importing the fixtures registers them for this directory too (pytest finds fixtures by name in a
conftest), so the modules here share one stack of their own for the session.
"""

from tests.integration.conftest import (  # noqa: F401  (fixtures, found by name)
    Stack,
    producer,
    receiver,
    receiver_port,
    stack,
)
