"""`caselink network load` on a real PostgreSQL: a file may name stations that are already in the
database (a new township under an existing county, a worker at an existing station), which are
held to the same rules as those the file defines; a file that breaks them writes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.cli import main
from services.shared.db import asyncpg_dsn
from services.shared.demo import CITY_ID, COUNTY_ID, demo_network
from services.shared.migrate import upgrade
from tests.support.isolation import isolated_settings_and_logging

__all__ = ["isolated_settings_and_logging"]  # a fixture: main() runs in-process

pytestmark = pytest.mark.integration

EXISTING_TOWNSHIP = "T-360402101"  # in the demo network


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture
def database(
    isolated_settings_and_logging: None, migrated: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The migrated database, holding the demo network, as the CLI's CASELINK_DATABASE_URL."""
    monkeypatch.setenv("CASELINK_DATABASE_URL", migrated)
    demo = tmp_path / "demo.yaml"
    demo.write_text(demo_network().dump_yaml(), encoding="utf-8")
    main(["network", "load", str(demo)])
    return migrated


def network_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "addition.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def rejection(argv: list[str]) -> str:
    """Run a command that must fail; return the message it exits with."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert isinstance(caught.value.code, str), f"expected an explanatory message, got {caught.value.code!r}"
    return caught.value.code


def sql(database_url: str, query: str, *params: Any) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return list(await conn.fetch(query, *params))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def stations_named(database_url: str, *ids: str) -> dict[str, tuple[str, str | None]]:
    rows = sql(database_url, "SELECT id, tier, parent_id FROM shared.stations WHERE id = ANY($1)", list(ids))
    return {row["id"]: (row["tier"], row["parent_id"]) for row in rows}


def users_named(database_url: str, *ids: str) -> dict[str, str | None]:
    rows = sql(database_url, "SELECT id, station_id FROM shared.users WHERE id = ANY($1)", list(ids))
    return {row["id"]: row["station_id"] for row in rows}


def test_a_file_adds_a_township_under_a_county_already_in_the_database(
    database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addition = network_file(
        tmp_path,
        f"""\
stations:
  - {{id: "T-360402199", name: "新设街道社工站", tier: township, parent: "{COUNTY_ID}"}}
  - {{id: "V-360402199001", name: "新设社区社工室", tier: village, parent: "T-360402199"}}
users:
  - {{id: "w-0199", name: "新人", station: "T-360402199", role: worker, specialties: [elderly_care], capacity: 5}}
  - {{id: "s-0199", name: "督导", station: "{EXISTING_TOWNSHIP}", role: supervisor}}
""",
    )
    capsys.readouterr()

    main(["network", "load", str(addition)])
    main(["network", "load", str(addition)])  # idempotent

    assert capsys.readouterr().out.splitlines() == [f"loaded 2 stations and 2 users from {addition}"] * 2
    assert stations_named(database, "T-360402199", "V-360402199001") == {
        "T-360402199": ("township", COUNTY_ID),
        "V-360402199001": ("village", "T-360402199"),
    }
    assert users_named(database, "w-0199", "s-0199") == {"w-0199": "T-360402199", "s-0199": EXISTING_TOWNSHIP}
    assert sql(database, "SELECT load FROM router.worker_load WHERE worker_id = 'w-0199'")[0]["load"] == 0


def test_a_station_in_neither_the_file_nor_the_database_rejects_the_whole_file(database: str, tmp_path: Path) -> None:
    addition = network_file(
        tmp_path,
        """\
stations:
  - {id: "T-360402198", name: "无主街道社工站", tier: township, parent: "C-999999"}
  - {id: "V-360402198001", name: "无主社区社工室", tier: village, parent: "T-360402198"}
  - {id: "T-360402197", name: "好街道社工站", tier: township, parent: "C-360402"}
users:
  - {id: "w-0198", name: "新人", station: "T-404", role: worker, specialties: [elderly_care], capacity: 5}
""",
    )

    message = rejection(["network", "load", str(addition)])

    assert message.splitlines() == [
        "network file rejected:",
        f"{addition}: stations[0] (T-360402198).parent: unknown station 'C-999999'",
        f"{addition}: users[0] (w-0198).station: unknown station 'T-404'",
    ]
    assert stations_named(database, "T-360402198", "V-360402198001", "T-360402197") == {}
    assert users_named(database, "w-0198") == {}


def test_a_parent_in_the_database_at_the_wrong_tier_is_rejected(database: str, tmp_path: Path) -> None:
    addition = network_file(
        tmp_path,
        f"""\
stations:
  - {{id: "T-360402196", name: "错挂街道社工站", tier: township, parent: "{EXISTING_TOWNSHIP}"}}
""",
    )

    message = rejection(["network", "load", str(addition)])

    assert message.splitlines() == [
        "network file rejected:",
        f"{addition}: stations[0] (T-360402196).parent: a township station's parent must be a county station, "
        f"'{EXISTING_TOWNSHIP}' is a township station",
    ]
    assert stations_named(database, "T-360402196") == {}


def test_a_station_moved_to_another_tier_over_rooms_the_file_leaves_out_is_rejected(
    database: str, tmp_path: Path
) -> None:
    rooms = [
        row["id"] for row in sql(database, "SELECT id FROM shared.stations WHERE parent_id = $1", EXISTING_TOWNSHIP)
    ]
    addition = network_file(
        tmp_path,
        f"""\
stations:
  - {{id: "{EXISTING_TOWNSHIP}", name: "十里街道社工站", tier: county, parent: "{CITY_ID}"}}
  - {{id: "T-360402195", name: "新设街道社工站", tier: township, parent: "{EXISTING_TOWNSHIP}"}}
users:
  - {{id: "w-0195", name: "新人", station: "T-360402195", role: worker, specialties: [elderly_care], capacity: 5}}
""",
    )

    message = rejection(["network", "load", str(addition)])

    assert len(rooms) > 1
    shown = ", ".join(sorted(rooms)[:5]) + (f" and {len(rooms) - 5} more" if len(rooms) > 5 else "")
    assert message.splitlines() == [
        "network file rejected:",
        f"{addition}: stations[0] ({EXISTING_TOWNSHIP}).tier: {len(rooms)} stations below it, not in this file, "
        f"need a township station as parent: {shown}",
    ]
    # Nothing was written: the station kept its tier and parent, the new ones are not there.
    assert stations_named(database, EXISTING_TOWNSHIP, "T-360402195") == {EXISTING_TOWNSHIP: ("township", COUNTY_ID)}
    assert users_named(database, "w-0195") == {}
