"""The bench's Jiujiang network and its referrals."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from schemas.referral import KafkaReferralSubmission, ReferralSubmission, id_number_check_char
from schemas.vocabulary import CATEGORIES
from services.bench.network import SYSTEM_USER, bench_network, split
from services.bench.workload import make_submissions, resident_id_number


def test_full_scale_is_jiujiang_with_about_3000_workers() -> None:
    network = bench_network("full")
    tiers = Counter(station.tier for station in network.stations)
    roles = Counter(user.role for user in network.users)
    assert tiers == {"city": 1, "county": 13, "township": 192, "village": 2500}
    assert roles["worker"] == 3000
    assert roles["supervisor"] == 1 + 13 + 192
    assert roles["system"] == 1


def test_the_network_is_the_same_for_the_same_seed_and_differs_for_another() -> None:
    assert bench_network("small", seed=3) == bench_network("small", seed=3)
    assert bench_network("small", seed=3) != bench_network("small", seed=4)


def test_every_township_has_certified_workers_for_every_category_and_crises() -> None:
    network = bench_network("full")
    townships = {s.id for s in network.stations if s.tier == "township"}
    covered: dict[str, set[str]] = {t: set() for t in townships}
    for user in network.users:
        if user.role == "worker" and user.station in townships and user.certification != "none":
            covered[user.station].update(user.specialties)
    assert all(set(CATEGORIES) <= categories for categories in covered.values())


def test_every_user_and_station_above_the_rooms_is_pushed_in_app_by_default() -> None:
    network = bench_network("small")
    staffed = [u for u in network.users if u.role != "system"]
    assert all([c.channel for c in u.notify] == ["inapp"] for u in staffed)
    assert all([c.channel for c in s.notify] == ["inapp"] for s in network.stations if s.tier != "village")


def test_webhook_channels_point_at_the_given_sink() -> None:
    network = bench_network("small", webhook_base_url="http://127.0.0.1:9/dev/inbox/")
    channel = next(u for u in network.users if u.role == "worker").notify[0]
    assert channel.channel == "webhook"
    assert channel.url.startswith("http://127.0.0.1:9/dev/inbox/w-")  # type: ignore[union-attr]


def test_split_gives_every_part_at_least_one_and_keeps_the_total() -> None:
    counts = split(2500, 192, random.Random(1))
    assert sum(counts) == 2500 and min(counts) >= 1 and len(counts) == 192
    with pytest.raises(ValueError):
        split(3, 4, random.Random(1))


def test_submissions_are_valid_unique_and_from_village_rooms() -> None:
    network = bench_network("small")
    rooms = [s.id for s in network.stations if s.tier == "village"]
    submissions = make_submissions(rooms, 300, seed=5, submitted_by=SYSTEM_USER)
    assert len({s.submission_id for s in submissions}) == 300
    for submission in submissions:
        kafka = KafkaReferralSubmission.model_validate_json(submission.kafka_value())
        assert kafka.room_id in rooms and kafka.submitted_by == SYSTEM_USER
        http = ReferralSubmission.model_validate_json(submission.http_body())
        assert http.submission_id is None and http.submitted_by is None


def test_submissions_mix_risks_mostly_routine_and_some_critical() -> None:
    submissions = make_submissions(["V-360402101001"], 2000, seed=5, submitted_by=SYSTEM_USER)
    risks = Counter(s.body["risk_level"] for s in submissions)
    assert risks["low"] > risks["medium"] > risks["high"] > risks["critical"] > 0
    assert len({s.body["category"] for s in submissions}) == len(CATEGORIES)


def test_resident_id_numbers_carry_the_room_county_and_a_valid_check_digit() -> None:
    number = resident_id_number("V-360423101001", 1950, random.Random(2))
    assert number.startswith("3604231950")
    assert number[17] == id_number_check_char(number[:17])
