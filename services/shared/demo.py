"""The demo network: 濂溪区 (Lianxi district, Jiujiang) with its township stations and village rooms."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from schemas.vocabulary import Category, Certification
from services.shared.network import (
    NetworkFile,
    NotifyChannel,
    StationSpec,
    UserSpec,
    WebhookChannel,
)

CITY_ID, CITY_NAME = "M-3604", "九江市社工支持中心"
COUNTY_ID, COUNTY_NAME = "C-360402", "濂溪区社工总站"
COUNTY_CODE = "360402"

# (township, its village rooms / community rooms); township ids run T-360402101, -102, … in this order.
TOWNSHIPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("十里街道", ("十里社区", "湖滨社区", "濂溪社区", "龙泉社区")),
    ("五里街道", ("五里社区", "芳兰社区", "莲花池社区", "妙智社区")),
    ("莲花镇", ("莲花社区", "谭畈村", "东林村", "新塘村")),
    ("姑塘镇", ("姑塘社区", "海关村", "桃花村", "龙湾村")),
    ("新港镇", ("新港社区", "长江村", "白石村", "沙河村")),
    ("虞家河乡", ("虞家河村", "桂花村", "金桥村", "莲东村")),
    ("威家镇", ("威家社区", "白鹿村", "石门村", "鄱湖村")),
    ("海会镇", ("海会社区", "高垄村", "五老村", "青山村")),
)
# Two rural townships without a crisis specialist: critical cases from there must escalate to the county.
TOWNSHIPS_WITHOUT_CRISIS_SPECIALIST = frozenset({"虞家河乡", "海会镇"})

# Village rooms with a worker of their own, as (township index, room index).
STAFFED_ROOMS: tuple[tuple[int, int], ...] = (
    *((t, 0) for t in range(len(TOWNSHIPS))),
    (0, 2),
    (1, 2),
    (2, 2),
    (3, 2),
)

# Deterministic, unique and ordinary: handed out in the order users are generated.
PEOPLE: tuple[str, ...] = tuple(
    (
        "周建华 郭秀英 陈志明 刘慧 胡卫东 熊丽萍 万小红 罗建国 李娟 王芳 张伟 徐桂兰 杨帆 黄丽 "
        "赵磊 吴敏 涂海涛 孙霞 喻志刚 朱琳 高峰 林燕 何勇 付春华 梁晓燕 宋志强 郑桂芳 谢文博 "
        "韩雪 唐明 冯玉梅 詹秋香 董国华 程刚 曹丽萍 袁小军 邓秀兰 许晓东 傅晓红 沈佳怡 曾志勇 彭丽娟 "
        "吕振华 苏敏 卢春燕 蒋涛 蔡晓琴 丁慧 魏巍 薛梅 叶子豪 余乐 潘婷婷 杜鹏 戴玉兰 钟诚"
    ).split()
)

# Ten categories spread over each township's three workers; crisis_intervention is added separately.
TOWNSHIP_SPECIALTIES: tuple[Category, ...] = (
    "social_assistance",
    "elderly_care",
    "child_protection",
    "family_support",
    "disability_support",
    "mental_health",
    "livelihood",
    "community_governance",
    "resource_linkage",
    "medical_social_work",
)
# Roughly half certified, as the Guangzhou year-one rule asks; every township gets at least one.
TOWNSHIP_CERTIFICATIONS: tuple[Certification, ...] = (
    "assistant",
    "none",
    "intermediate",
    "none",
    "assistant",
    "none",
)
CAPACITIES = (12, 10, 8, 15, 9, 14, 11, 13)
VILLAGE_SPECIALTIES: tuple[Category, ...] = (
    "elderly_care",
    "social_assistance",
    "family_support",
    "community_governance",
    "disability_support",
    "livelihood",
    "resource_linkage",
)

COUNTY_WORKERS: tuple[tuple[Certification, tuple[Category, ...], int], ...] = (
    ("senior", ("child_protection", "mental_health", "crisis_intervention", "family_support"), 10),
    ("intermediate", ("mental_health", "child_protection", "crisis_intervention", "medical_social_work"), 12),
    ("intermediate", ("disability_support", "social_assistance", "resource_linkage", "elderly_care"), 14),
    ("assistant", ("livelihood", "community_governance", "resource_linkage", "family_support"), 15),
)
CITY_WORKERS: tuple[tuple[Certification, tuple[Category, ...], int], ...] = (
    ("senior", ("crisis_intervention", "child_protection", "mental_health"), 8),
    (
        "intermediate",
        ("medical_social_work", "disability_support", "resource_linkage", "community_governance"),
        10,
    ),
)

# A 莲花镇 generalist and the 海会社区 room worker: never a demo login nor a township's crisis specialist.
OFF_DUTY = frozenset({"w-0014", "w-0038"})

# Ids follow generation order (city, county, townships, rooms); tests pin what each of these is.
DEMO_USERS: dict[str, str] = {"worker": "w-0031", "supervisor": "s-0002", "system": "sys-portal"}


def township_id(index: int) -> str:
    """Return the station id of the index-th demo township (0-based)."""
    return f"T-{COUNTY_CODE}{101 + index}"


def room_id(township_index: int, room_index: int) -> str:
    """Return the station id of a demo village room (both indexes 0-based)."""
    return f"V-{COUNTY_CODE}{101 + township_index}{room_index + 1:03d}"


def demo_secret(owner: str) -> str:
    """Return the deterministic webhook secret of a demo user or station channel."""
    return "demo-" + hashlib.sha256(owner.encode()).hexdigest()[:16]


def demo_network(webhook_base_url: str | None = None) -> NetworkFile:
    """Build the demo network; with a base URL every worker, supervisor and staffed station gets a webhook."""
    base = webhook_base_url.rstrip("/") if webhook_base_url else None
    return NetworkFile(stations=_stations(base), users=_users(base))


def _webhook(base: str | None, owner: str) -> list[NotifyChannel]:
    if base is None:
        return []
    return [WebhookChannel(channel="webhook", url=f"{base}/{owner}", secret=demo_secret(owner))]


def _stations(base: str | None) -> list[StationSpec]:
    stations = [
        StationSpec(id=CITY_ID, name=CITY_NAME, tier="city"),
        StationSpec(
            id=COUNTY_ID,
            name=COUNTY_NAME,
            tier="county",
            parent=CITY_ID,
            notify=_webhook(base, f"station-{COUNTY_ID}"),
        ),
    ]
    for t, (township, rooms) in enumerate(TOWNSHIPS):
        tid = township_id(t)
        stations.append(
            StationSpec(
                id=tid,
                name=f"{township}社工站",
                tier="township",
                parent=COUNTY_ID,
                notify=_webhook(base, f"station-{tid}"),
            )
        )
        stations.extend(
            StationSpec(id=room_id(t, r), name=f"{room}社工室", tier="village", parent=tid)
            for r, room in enumerate(rooms)
        )
    return stations


class _Staff:
    """Hands out worker/supervisor ids and names in generation order, so the demo never changes."""

    def __init__(self, base: str | None) -> None:
        self.base = base
        self.names: Iterator[str] = iter(PEOPLE)
        self.workers = 0
        self.supervisors = 0

    def supervisor(self, station: str, certification: Certification) -> UserSpec:
        self.supervisors += 1
        uid = f"s-{self.supervisors:04d}"
        return UserSpec(
            id=uid,
            name=next(self.names),
            station=station,
            role="supervisor",
            certification=certification,
            notify=_webhook(self.base, uid),
        )

    def worker(
        self,
        station: str,
        certification: Certification,
        specialties: list[Category],
        capacity: int,
    ) -> UserSpec:
        self.workers += 1
        uid = f"w-{self.workers:04d}"
        return UserSpec(
            id=uid,
            name=next(self.names),
            station=station,
            role="worker",
            specialties=specialties,
            certification=certification,
            capacity=capacity,
            on_duty=uid not in OFF_DUTY,
            notify=_webhook(self.base, uid),
        )


def _users(base: str | None) -> list[UserSpec]:
    staff = _Staff(base)
    users = [staff.supervisor(CITY_ID, "senior")]
    users += [staff.worker(CITY_ID, c, list(s), cap) for c, s, cap in CITY_WORKERS]
    users.append(staff.supervisor(COUNTY_ID, "senior"))
    users += [staff.worker(COUNTY_ID, c, list(s), cap) for c, s, cap in COUNTY_WORKERS]
    for t, (township, _) in enumerate(TOWNSHIPS):
        users.extend(_township_staff(staff, t, township))
    for n, (t, r) in enumerate(STAFFED_ROOMS):
        specialties = [VILLAGE_SPECIALTIES[(n + k) % len(VILLAGE_SPECIALTIES)] for k in range(5)]
        certification: Certification = "assistant" if n % 2 else "none"
        users.append(staff.worker(room_id(t, r), certification, specialties, 6))
    users.append(UserSpec(id="sys-portal", name="县民政信息平台", role="system"))
    return users


def _township_staff(staff: _Staff, t: int, township: str) -> list[UserSpec]:
    station = township_id(t)
    # Rotating the categories gives each township a different division of labour among its workers.
    rotated = [TOWNSHIP_SPECIALTIES[(3 * t + k) % len(TOWNSHIP_SPECIALTIES)] for k in range(10)]
    shares = [rotated[0:4], rotated[4:8], [*rotated[8:10], rotated[0]]]
    certifications = [TOWNSHIP_CERTIFICATIONS[(3 * t + j) % len(TOWNSHIP_CERTIFICATIONS)] for j in range(3)]
    crisis_worker = next(j for j, c in enumerate(certifications) if c != "none")
    team = [staff.supervisor(station, "intermediate" if t % 2 == 0 else "assistant")]
    for j in range(3):
        specialties = list(shares[j])
        if j == crisis_worker and township not in TOWNSHIPS_WITHOUT_CRISIS_SPECIALIST:
            specialties.append("crisis_intervention")
        capacity = CAPACITIES[(3 * t + j) % len(CAPACITIES)]
        team.append(staff.worker(station, certifications[j], specialties, capacity))
    return team
