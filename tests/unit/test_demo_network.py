"""The demo network: valid, realistic in size and mix, deterministic, with webhooks on request."""

from __future__ import annotations

from collections import Counter

from schemas.vocabulary import CATEGORIES
from services.shared.demo import DEMO_USERS, demo_network, demo_secret
from services.shared.network import NetworkFile, WebhookChannel, parse_network

BASE = "http://127.0.0.1:8900/hooks"


def _by_tier(network: NetworkFile) -> Counter[str]:
    return Counter(s.tier for s in network.stations)


def _tier_of_station(network: NetworkFile) -> dict[str, str]:
    return {s.id: s.tier for s in network.stations}


def test_demo_network_round_trips_through_yaml() -> None:
    for network in (demo_network(), demo_network(BASE)):
        assert parse_network(network.dump_yaml()) == network


def test_demo_network_is_deterministic() -> None:
    assert demo_network() == demo_network()
    assert demo_network(BASE).dump_yaml() == demo_network(BASE).dump_yaml()


def test_demo_network_has_a_realistic_size() -> None:
    network = demo_network()
    tiers = _by_tier(network)
    roles = Counter(u.role for u in network.users)

    assert tiers["city"] == 1
    assert tiers["county"] >= 1
    assert tiers["township"] >= 5
    assert tiers["village"] >= 20
    assert roles["worker"] >= 40
    assert len(network.users) >= 48


def test_every_township_has_rooms_three_workers_and_a_supervisor() -> None:
    network = demo_network()
    tier_of = _tier_of_station(network)
    for township in (s for s in network.stations if s.tier == "township"):
        rooms = [s for s in network.stations if s.parent == township.id]
        staff = Counter(u.role for u in network.users if u.station == township.id)
        assert len(rooms) >= 4 and all(tier_of[r.id] == "village" for r in rooms)
        assert staff == Counter({"worker": 3, "supervisor": 1})


def test_demo_workers_cover_all_categories() -> None:
    network = demo_network()

    covered = {c for u in network.users if u.role == "worker" for c in u.specialties}

    assert covered == set(CATEGORIES)


def test_some_but_not_all_townships_have_a_crisis_specialist() -> None:
    network = demo_network()
    townships = [s.id for s in network.stations if s.tier == "township"]

    with_crisis = {u.station for u in network.users if u.role == "worker" and "crisis_intervention" in u.specialties}

    covered = [t for t in townships if t in with_crisis]
    assert len(townships) // 2 < len(covered) < len(townships)


def test_county_hub_has_certified_specialists_for_serious_cases() -> None:
    network = demo_network()
    county = next(s.id for s in network.stations if s.tier == "county")
    senior_staff = [
        u
        for u in network.users
        if u.station == county and u.role == "worker" and u.certification in ("intermediate", "senior")
    ]

    assert len(senior_staff) >= 2
    covered = {c for u in senior_staff for c in u.specialties}
    assert {"child_protection", "mental_health", "crisis_intervention"} <= covered


def test_certifications_are_mixed_roughly_half_certified() -> None:
    workers = [u for u in demo_network().users if u.role == "worker"]

    levels = Counter(u.certification for u in workers)

    assert set(levels) == {"none", "assistant", "intermediate", "senior"}
    assert 0.35 <= (len(workers) - levels["none"]) / len(workers) <= 0.7


def test_capacities_and_duty_are_realistic() -> None:
    network = demo_network()
    tier_of = _tier_of_station(network)
    workers = [u for u in network.users if u.role == "worker"]

    for worker in workers:
        assert worker.station is not None
        if tier_of[worker.station] == "village":
            assert worker.capacity == 6 and worker.certification in ("none", "assistant")
        else:
            assert 8 <= worker.capacity <= 15
    assert 2 <= sum(not w.on_duty for w in workers) <= 4


def test_people_have_unique_chinese_names() -> None:
    people = [u for u in demo_network().users if u.role != "system"]

    assert len({u.name for u in people}) == len(people)
    assert all(2 <= len(u.name) <= 3 and "\u4e00" <= u.name[0] <= "\u9fff" for u in people)


def test_demo_users_name_a_room_worker_a_county_supervisor_and_the_portal() -> None:
    network = demo_network()
    users = {u.id: u for u in network.users}
    tier_of = _tier_of_station(network)

    worker, supervisor, system = (users[DEMO_USERS[k]] for k in ("worker", "supervisor", "system"))

    assert worker.role == "worker" and worker.on_duty and tier_of[worker.station or ""] == "village"
    assert supervisor.role == "supervisor" and tier_of[supervisor.station or ""] == "county"
    assert (system.role, system.name) == ("system", "县民政信息平台")


def test_without_base_url_nobody_has_a_channel() -> None:
    network = demo_network()

    assert all(not u.notify for u in network.users)
    assert all(not s.notify for s in network.stations)


def test_with_base_url_workers_supervisors_and_stations_get_webhooks() -> None:
    network = demo_network(BASE + "/")

    for user in network.users:
        if user.role == "system":
            assert user.notify == []
        else:
            assert user.notify == [
                WebhookChannel(channel="webhook", url=f"{BASE}/{user.id}", secret=demo_secret(user.id))
            ]
    for station in network.stations:
        if station.tier in ("township", "county"):
            (channel,) = station.notify
            assert isinstance(channel, WebhookChannel)
            assert channel.url == f"{BASE}/station-{station.id}"
            assert channel.secret and channel.secret.startswith("demo-")
        else:
            assert station.notify == []


def test_demo_secrets_differ_per_owner() -> None:
    network = demo_network(BASE)

    secrets = [c.secret for u in network.users for c in u.notify if isinstance(c, WebhookChannel)]

    assert len(set(secrets)) == len(secrets)
