"""The benchmark's referrals: valid `ReferralSubmission` JSON with a realistic mix (pure, seeded).

Rooms are drawn uniformly from the network's village rooms, categories uniformly, risk levels
with the same mix `caselink policy simulate` uses (mostly routine, a few crises). Every
submission gets a fresh random `submission_id`, so a run never collides with an earlier one in
a reused database; everything else follows from the seed.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

from schemas.referral import id_number_check_char
from schemas.vocabulary import CATEGORIES
from services.router.simulation import RISK_MIX

SURNAMES = "王李张刘陈杨黄赵吴周徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕"
GIVEN = "秀英桂兰玉梅建国志强丽娟明华文杰海燕春花德福淑珍国平小红子豪雨欣"
SUMMARIES: dict[str, str] = {
    "social_assistance": "低保家庭收入骤降，申请临时救助",
    "elderly_care": "独居老人近一周未出门，邻居反映无人送餐",
    "child_protection": "困境儿童监护缺失，学校反映长期缺课",
    "disability_support": "重度残疾人康复辅具损坏，需要链接资源",
    "mental_health": "精神障碍康复者停药，家属求助",
    "crisis_intervention": "家庭矛盾激化，当事人情绪失控",
    "medical_social_work": "大病患者出院后无人照护",
    "family_support": "单亲家庭育儿压力大，申请家庭支持",
    "livelihood": "返乡人员就业困难，需要技能培训",
    "community_governance": "小区公共设施纠纷，居民联名反映",
    "resource_linkage": "特困老人需要链接助餐和助浴服务",
}
GENDERS = ("female", "male")


@dataclass(frozen=True)
class Submission:
    """One referral as the bench sends it: its id, its Kafka key (the room) and its JSON."""

    submission_id: str
    room_id: str
    body: dict[str, Any]

    def kafka_value(self) -> bytes:
        """The message on caselink.referrals.submitted."""
        return json.dumps(self.body, ensure_ascii=False).encode()

    def http_body(self) -> bytes:
        """The body of POST /v1/referrals: the same referral without the Kafka-only fields."""
        body = {k: v for k, v in self.body.items() if k not in ("submission_id", "submitted_by")}
        return json.dumps(body, ensure_ascii=False).encode()


def resident_id_number(room_id: str, birth_year: int, rng: random.Random) -> str:
    """A valid GB 11643 resident id: the room's county code, a birth date in that year, a check digit."""
    region = room_id[2:8] if room_id[2:8].isdigit() else "360402"
    first17 = f"{region}{birth_year:04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    return first17 + id_number_check_char(first17)


def make_submissions(rooms: list[str], count: int, *, seed: int, submitted_by: str) -> list[Submission]:
    """`count` valid submissions from `rooms` (the rest of each is drawn from `seed`)."""
    if count and not rooms:
        raise ValueError("no village rooms to submit from")
    rng = random.Random(seed)
    risks, shares = list(RISK_MIX), list(RISK_MIX.values())
    ordered = sorted(rooms)
    return [_submission(ordered, rng, risks, shares, submitted_by) for _ in range(count)]


def _submission(
    rooms: list[str], rng: random.Random, risks: list[str], shares: list[float], submitted_by: str
) -> Submission:
    room = rng.choice(rooms)
    category = rng.choice(CATEGORIES)
    birth_year = rng.randint(1935, 2018)
    resident: dict[str, Any] = {
        "name": rng.choice(SURNAMES) + "".join(rng.sample(GIVEN, 2)),
        "birth_year": birth_year,
        "gender": rng.choice(GENDERS),
        "address": f"{room}片区{rng.randint(1, 40)}栋{rng.randint(101, 1802)}室",
    }
    if rng.random() < 0.5:
        resident["id_number"] = resident_id_number(room, birth_year, rng)
    submission_id = str(uuid.uuid4())
    body = {
        "submission_id": submission_id,
        "room_id": room,
        "submitted_by": submitted_by,
        "category": category,
        "risk_level": rng.choices(risks, shares)[0],
        "summary": SUMMARIES[category],
        "resident": resident,
        "consent": {"given": True, "scope": "service", "recorded_by": submitted_by},
    }
    return Submission(submission_id, room, body)
