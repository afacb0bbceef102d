"""`caselink bench`'s arguments: bad ones are refused by name before anything starts."""

from __future__ import annotations

import argparse

import pytest

from services.bench.cli import add_arguments


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_replica_counts_are_read_in_order() -> None:
    assert parse("--replicas", "1,2").replicas == [1, 2]
    assert parse("--replicas", "2").replicas == [2]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1,x", "expected counts like 1,2"),
        ("0,1", "at least 1"),
        ("", "at least 1"),
        ("1,2,1", "each replica count once"),
    ],
)
def test_bad_replica_counts_are_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentError, match=says) as refused:
        parse("--replicas", text)
    assert "--replicas" in str(refused.value)
