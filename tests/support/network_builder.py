"""Network files (CONTRACT §5) built in code for integration tests: one city centre with an
independent county subtree per scenario, so scenarios never share a worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from services.shared.network import parse_network


@dataclass(frozen=True)
class Subtree:
    """A county hub, its township stations and their village rooms (ids derived from a short name)."""

    county: str
    townships: list[str]
    rooms: dict[str, list[str]]  # township -> its village rooms

    def room(self, township: int = 0, index: int = 0) -> str:
        """A village room under the township with this index."""
        return self.rooms[self.townships[township]][index]

    @property
    def all_rooms(self) -> list[str]:
        return [room for rooms in self.rooms.values() for room in rooms]


@dataclass
class NetworkBuilder:
    """Stations and users in file order; `dump_yaml()` is what `caselink network load` reads."""

    stations: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)

    def station(self, station_id: str, tier: str, parent: str | None = None) -> str:
        spec: dict[str, Any] = {"id": station_id, "name": f"{tier} {station_id}", "tier": tier}
        if parent is not None:
            spec["parent"] = parent
        self.stations[station_id] = spec
        return station_id

    def subtree(self, name: str, *, city: str, townships: int = 2, rooms_per_township: int = 1) -> Subtree:
        """A county `C-<name>` under `city` with townships `T-<name>-<i>` and rooms `V-<name>-<i>-<j>`."""
        county = self.station(f"C-{name}", "county", city)
        rooms: dict[str, list[str]] = {}
        for i in range(1, townships + 1):
            township = self.station(f"T-{name}-{i}", "township", county)
            rooms[township] = [
                self.station(f"V-{name}-{i}-{j}", "village", township) for j in range(1, rooms_per_township + 1)
            ]
        return Subtree(county, list(rooms), rooms)

    def worker(
        self,
        worker_id: str,
        station: str,
        specialties: list[str],
        *,
        certification: str = "intermediate",
        capacity: int = 10,
        on_duty: bool = True,
    ) -> str:
        self.users[worker_id] = {
            "id": worker_id,
            "name": f"worker {worker_id}",
            "station": station,
            "role": "worker",
            "specialties": specialties,
            "certification": certification,
            "capacity": capacity,
            "on_duty": on_duty,
        }
        return worker_id

    def supervisor(self, user_id: str, station: str) -> str:
        self.users[user_id] = {"id": user_id, "name": f"supervisor {user_id}", "station": station, "role": "supervisor"}
        return user_id

    def system_user(self, user_id: str) -> str:
        self.users[user_id] = {"id": user_id, "name": f"system {user_id}", "role": "system"}
        return user_id

    def set_on_duty(self, worker_id: str, on_duty: bool) -> None:
        self.users[worker_id]["on_duty"] = on_duty

    def dump_yaml(self) -> str:
        """The network file; validated here so a broken test network fails before any service sees it."""
        text = yaml.safe_dump(
            {"stations": list(self.stations.values()), "users": list(self.users.values())},
            allow_unicode=True,
            sort_keys=False,
        )
        parse_network(text)
        return text
