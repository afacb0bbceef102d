"""The benchmark's station network: Jiujiang at full scale (DOMAIN.md), generated deterministically.

1 city support centre, 13 county hubs (Jiujiang's real county-level divisions), 192 township
stations and 2,500 village rooms, with about 3,000 workers and a supervisor at every township,
county and the city. `small` keeps the same shape at a size an integration test can load in
a second.

Capacities are sized for a benchmark, not for a working week: nobody accepts, resolves or
declines during a bench run, so every offered case keeps its weight on a worker until the end.
Capacities are generous so that most of a run's cases are assigned rather than queued. Village
workers take every category (全科式受理); township and county workers split the categories
between them so every category has certified workers at every township.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from schemas.vocabulary import CATEGORIES, Category, Certification
from services.shared.demo import demo_secret
from services.shared.network import (
    InappChannel,
    NetworkFile,
    NotifyChannel,
    StationSpec,
    UserSpec,
    WebhookChannel,
)

Scale = Literal["full", "small"]
SYSTEM_USER = "sys-bench"
CITY_ID = "M-3604"

# Jiujiang's county-level divisions and their administrative codes.
COUNTIES: tuple[tuple[str, str], ...] = (
    ("360402", "濂溪区"),
    ("360403", "浔阳区"),
    ("360404", "柴桑区"),
    ("360423", "武宁县"),
    ("360424", "修水县"),
    ("360425", "永修县"),
    ("360426", "德安县"),
    ("360428", "都昌县"),
    ("360429", "湖口县"),
    ("360430", "彭泽县"),
    ("360481", "瑞昌市"),
    ("360482", "共青城市"),
    ("360483", "庐山市"),
)
SYLLABLES = "东西南北新长青白石桃花龙湖山河金桂莲沙高五丰安和平兴隆永乐港泉洲塘林庄坪源"
TOWNSHIP_KINDS = ("镇", "乡", "街道")
VILLAGE_KINDS = ("村", "社区")
TOWNSHIP_TEAM: tuple[Certification, ...] = ("intermediate", "assistant", "assistant", "none", "assistant")
SPECIALTIES_PER_TOWNSHIP_WORKER = 6
GENERALIST: tuple[Category, ...] = tuple(c for c in CATEGORIES if c != "crisis_intervention")  # type: ignore[misc]


@dataclass(frozen=True)
class Shape:
    """How big a generated network is."""

    counties: int
    townships: int
    rooms: int
    workers: int


SHAPES: dict[str, Shape] = {
    "full": Shape(counties=13, townships=192, rooms=2500, workers=3000),
    "small": Shape(counties=2, townships=6, rooms=24, workers=60),
}
COUNTY_WORKERS = 8
CITY_WORKERS = 4


def split(total: int, parts: int, rng: random.Random) -> list[int]:
    """Split `total` into `parts` positive counts that vary around the mean (deterministic for a seed)."""
    if parts < 1 or total < parts:
        raise ValueError(f"cannot split {total} into {parts} positive parts")
    weights = [rng.uniform(0.6, 1.4) for _ in range(parts)]
    scale = (total - parts) / sum(weights)
    counts = [1 + int(w * scale) for w in weights]
    for i in range(total - sum(counts)):
        counts[i % parts] += 1
    return counts


def bench_network(scale: Scale = "full", *, seed: int = 7, webhook_base_url: str | None = None) -> NetworkFile:
    """The Jiujiang network at `scale`; with a base URL channels are signed webhooks there, else in-app."""
    return _Generator(SHAPES[scale], random.Random(seed), webhook_base_url).build()


class _Generator:
    """Stations top-down, then their staff; ids follow generation order, so a seed fixes the network."""

    def __init__(self, shape: Shape, rng: random.Random, webhook_base_url: str | None) -> None:
        self.shape = shape
        self.rng = rng
        self.base = webhook_base_url.rstrip("/") if webhook_base_url else None
        self.stations: list[StationSpec] = []
        self.users: list[UserSpec] = []
        self.workers = 0
        self.supervisors = 0

    def build(self) -> NetworkFile:
        shape, rng = self.shape, self.rng
        self.stations.append(
            StationSpec(id=CITY_ID, name="九江市社工支持中心", tier="city", notify=self.channels(CITY_ID))
        )
        self.staff(CITY_ID, ["senior"] * CITY_WORKERS, capacity=(60, 80))
        townships_per_county = split(shape.townships, shape.counties, rng)
        rooms_per_township = split(shape.rooms, shape.townships, rng)
        rooms: list[str] = []
        t_index = 0
        for (code, county_name), n_townships in zip(COUNTIES[: shape.counties], townships_per_county, strict=True):
            county = f"C-{code}"
            self.station(county, f"{county_name}社工总站", "county", CITY_ID)
            county_team: list[Certification] = ["senior", "intermediate"] * (COUNTY_WORKERS // 2)
            self.staff(county, county_team, capacity=(40, 60))
            for t in range(n_townships):
                township = f"T-{code}{101 + t}"
                name = self.place_name() + TOWNSHIP_KINDS[t % len(TOWNSHIP_KINDS)]
                self.station(township, f"{name}社工站", "township", county)
                self.township_team(township, t_index)
                for r in range(rooms_per_township[t_index]):
                    room = f"V-{code}{101 + t}{r + 1:03d}"
                    village = self.place_name() + VILLAGE_KINDS[r % len(VILLAGE_KINDS)]
                    self.stations.append(StationSpec(id=room, name=f"{village}社工室", tier="village", parent=township))
                    rooms.append(room)
                t_index += 1
        staffed = shape.workers - self.workers
        for room in sorted(rng.sample(rooms, min(staffed, len(rooms)))):
            certification: Certification = "assistant" if rng.random() < 0.5 else "none"
            self.worker(room, certification, list(GENERALIST), rng.randint(10, 20))
        self.users.append(UserSpec(id=SYSTEM_USER, name="九江市民政信息平台（压测）", role="system"))
        return NetworkFile(stations=self.stations, users=self.users)

    def place_name(self) -> str:
        return "".join(self.rng.sample(SYLLABLES, 2))

    def channels(self, owner: str) -> list[NotifyChannel]:
        if self.base is None:
            return [InappChannel(channel="inapp")]
        return [WebhookChannel(channel="webhook", url=f"{self.base}/{owner}", secret=demo_secret(owner))]

    def station(self, station_id: str, name: str, tier: Literal["county", "township"], parent: str) -> None:
        self.stations.append(
            StationSpec(id=station_id, name=name, tier=tier, parent=parent, notify=self.channels(station_id))
        )

    def staff(self, station: str, team: list[Certification], *, capacity: tuple[int, int]) -> None:
        """A supervisor and a team of senior/intermediate workers who take every category."""
        self.supervisor(station)
        for certification in team:
            self.worker(station, certification, list(CATEGORIES), self.rng.randint(*capacity))

    def township_team(self, township: str, index: int) -> None:
        """A supervisor and five workers splitting the categories; the two most certified take crises too."""
        self.supervisor(township)
        others = [c for c in CATEGORIES if c != "crisis_intervention"]
        for j, certification in enumerate(TOWNSHIP_TEAM):
            start = (index * 3 + j * 2) % len(others)
            specialties = [others[(start + k) % len(others)] for k in range(SPECIALTIES_PER_TOWNSHIP_WORKER)]
            if j < 2:
                specialties.append("crisis_intervention")
            self.worker(township, certification, specialties, self.rng.randint(30, 50))

    def supervisor(self, station: str) -> None:
        self.supervisors += 1
        uid = f"s-{self.supervisors:04d}"
        self.users.append(
            UserSpec(
                id=uid,
                name=f"督导{self.supervisors:04d}",
                station=station,
                role="supervisor",
                certification="intermediate",
                notify=self.channels(uid),
            )
        )

    def worker(self, station: str, certification: Certification, specialties: list[str], capacity: int) -> None:
        self.workers += 1
        uid = f"w-{self.workers:05d}"
        self.users.append(
            UserSpec(
                id=uid,
                name=f"社工{self.workers:05d}",
                station=station,
                role="worker",
                specialties=specialties,  # type: ignore[arg-type]
                certification=certification,
                capacity=capacity,
                notify=self.channels(uid),
            )
        )
