"""The network file of CONTRACT §5: parsing, cross-checks and their error messages, YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.shared.network import (
    InappChannel,
    NetworkFile,
    NetworkFileError,
    SmsChannel,
    WebhookChannel,
    load_network_file,
    parse_network,
)

# Verbatim from CONTRACT.md §5.
CONTRACT_EXAMPLE = """\
stations:
  - {id: "M-3604", name: "九江市社工支持中心", tier: city}
  - {id: "C-360402", name: "濂溪区社工总站", tier: county, parent: "M-3604"}
  - {id: "T-360402101", name: "十里街道社工站", tier: township, parent: "C-360402"}
  - {id: "V-360402101001", name: "十里社区社工室", tier: village, parent: "T-360402101"}
users:                      # workers, supervisors and system users
  - id: "w-0001"
    name: "李娟"
    station: "T-360402101"
    role: worker            # worker | supervisor | system
    specialties: [elderly_care, social_assistance]
    certification: assistant   # none | assistant (助理社工师) | intermediate (社工师) | senior (高级社工师)
    capacity: 12            # weighted open-case capacity
    on_duty: true
    notify:                 # channels, tried in order; stations may carry `notify` too (their supervisors' shared channels)
      - {channel: webhook, url: "https://example.org/hooks/w-0001", secret: "s3cret"}
  - {id: "sys-portal", name: "县民政信息平台", role: system}   # a system user: may submit for any room
"""  # noqa: E501


def _network(stations: list[dict] | None = None, users: list[dict] | None = None) -> dict:
    """A small valid network as data, with extra stations and users appended."""
    base = yaml.safe_load(CONTRACT_EXAMPLE)
    base["stations"] += stations or []
    base["users"] += users or []
    return base


def _errors_of(data: dict) -> list[str]:
    with pytest.raises(NetworkFileError) as caught:
        parse_network(yaml.safe_dump(data, allow_unicode=True))
    return caught.value.errors


def test_contract_example_parses_verbatim() -> None:
    network = parse_network(CONTRACT_EXAMPLE)

    assert [s.tier for s in network.stations] == ["city", "county", "township", "village"]
    worker, system = network.users
    assert worker.name == "李娟"
    assert worker.specialties == ["elderly_care", "social_assistance"]
    assert (worker.certification, worker.capacity, worker.on_duty) == ("assistant", 12, True)
    assert worker.notify == [WebhookChannel(channel="webhook", url="https://example.org/hooks/w-0001", secret="s3cret")]
    assert (system.role, system.station, system.capacity, system.notify) == ("system", None, 0, [])


def test_every_notify_channel_parses() -> None:
    channels = [
        {"channel": "webhook", "url": "https://example.org/h"},
        {"channel": "wecom", "url": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"},
        {"channel": "dingtalk", "url": "https://oapi.dingtalk.com/robot/send?access_token=t", "secret": "x"},
        {"channel": "email", "address": "lijuan@example.org"},
        {"channel": "sms", "phone": "+86 138-0000-0000", "template_id": "SMS_1"},
        {"channel": "inapp"},
    ]
    data = _network(
        stations=[
            {
                "id": "T-2",
                "name": "五里街道社工站",
                "tier": "township",
                "parent": "C-360402",
                "notify": channels,
            }
        ]
    )

    network = parse_network(yaml.safe_dump(data, allow_unicode=True))

    notify = network.stations[-1].notify
    assert [c.channel for c in notify] == ["webhook", "wecom", "dingtalk", "email", "sms", "inapp"]
    assert notify[4] == SmsChannel(channel="sms", phone="+86 138-0000-0000", template_id="SMS_1")
    assert notify[5] == InappChannel(channel="inapp")


def test_unknown_channel_is_rejected_naming_the_item() -> None:
    data = _network()
    data["users"][0]["notify"] = [{"channel": "fax", "number": "1"}]

    (error,) = _errors_of(data)

    assert error.startswith("users[0] (w-0001).notify[0]: ")
    assert "fax" in error


def test_channel_field_error_names_the_field_not_the_union_tag() -> None:
    data = _network()
    data["users"][0]["notify"] = [{"channel": "webhook", "url": "ftp://example.org"}]

    assert _errors_of(data) == [
        "users[0] (w-0001).notify[0].url: must be an http:// or https:// URL, got 'ftp://example.org'"
    ]


@pytest.mark.parametrize(
    ("where", "key"),
    [("stations", "colour"), ("users", "phone")],
)
def test_unknown_key_is_rejected(where: str, key: str) -> None:
    data = _network()
    data[where][0][key] = "x"

    (error,) = _errors_of(data)

    first_id = data[where][0]["id"]
    assert error.startswith(f"{where}[0] ({first_id}).{key}: ")


def test_unknown_top_level_key_is_rejected() -> None:
    data = _network()
    data["rooms"] = []

    assert _errors_of(data)[0].startswith("rooms: ")


def test_field_errors_name_the_item_and_field() -> None:
    data = _network(
        users=[
            {
                "id": "w-0002",
                "name": "王芳",
                "station": "T-360402101",
                "role": "worker",
                "specialties": ["gardening"],
                "capacity": -1,
            }
        ]
    )

    errors = _errors_of(data)

    assert any(e.startswith("users[2] (w-0002).specialties[0]: ") for e in errors)
    assert any(e.startswith("users[2] (w-0002).capacity: ") for e in errors)


def test_a_capacity_beyond_any_caseload_is_refused_naming_the_field() -> None:
    worker = {"id": "w-0002", "name": "王芳", "station": "T-360402101", "role": "worker", "specialties": ["livelihood"]}
    data = _network(users=[worker | {"capacity": 99_999_999_999}])

    assert _errors_of(data) == ["users[2] (w-0002).capacity: Input should be less than or equal to 100000"]


def test_user_with_unknown_station_is_rejected() -> None:
    data = _network(
        users=[
            {
                "id": "w-0004",
                "name": "张伟",
                "station": "T-999",
                "role": "worker",
                "specialties": ["livelihood"],
                "capacity": 8,
            }
        ]
    )

    assert _errors_of(data) == ["users[2] (w-0004).station: unknown station 'T-999'"]


@pytest.mark.parametrize("role", ["worker", "supervisor"])
def test_worker_and_supervisor_need_a_station(role: str) -> None:
    data = _network(users=[{"id": "u-1", "name": "张伟", "role": role, "specialties": ["livelihood"], "capacity": 8}])

    assert _errors_of(data) == [f"users[2] (u-1).station: a {role} needs a home station"]


def test_system_user_may_have_a_station_but_it_must_exist() -> None:
    data = _network(users=[{"id": "sys-2", "name": "乡镇平台", "role": "system", "station": "T-404"}])

    assert _errors_of(data) == ["users[2] (sys-2).station: unknown station 'T-404'"]


def test_worker_needs_capacity_and_a_specialty() -> None:
    data = _network(users=[{"id": "w-0009", "name": "刘洋", "station": "T-360402101", "role": "worker"}])

    assert _errors_of(data) == [
        "users[2] (w-0009).capacity: a worker needs capacity > 0",
        "users[2] (w-0009).specialties: a worker needs at least one specialty",
    ]


def test_supervisor_needs_neither_capacity_nor_specialty() -> None:
    data = _network(users=[{"id": "s-1", "name": "陈静", "station": "C-360402", "role": "supervisor"}])

    assert parse_network(yaml.safe_dump(data, allow_unicode=True)).users[-1].capacity == 0


def test_duplicate_ids_are_rejected() -> None:
    data = _network(
        stations=[{"id": "T-360402101", "name": "重复", "tier": "township", "parent": "C-360402"}],
        users=[{"id": "sys-portal", "name": "重复", "role": "system"}],
    )

    assert _errors_of(data) == [
        "stations[4] (T-360402101).id: duplicate station id, first at stations[2]",
        "users[2] (sys-portal).id: duplicate user id, first at users[1]",
    ]


def test_unknown_parent_is_rejected() -> None:
    data = _network(stations=[{"id": "V-2", "name": "某村社工室", "tier": "village", "parent": "T-0"}])

    assert _errors_of(data) == ["stations[4] (V-2).parent: unknown station 'T-0'"]


@pytest.mark.parametrize(
    ("station", "message"),
    [
        (
            {"id": "V-1", "tier": "village", "parent": "C-360402"},
            "stations[4] (V-1).parent: a village room's parent must be a township station, 'C-360402' is a county hub",
        ),
        (
            {"id": "T-1", "tier": "township", "parent": "M-3604"},
            "stations[4] (T-1).parent: a township station's parent must be a county station, 'M-3604' is a city centre",
        ),
        (
            {"id": "C-1", "tier": "county", "parent": "C-360402"},
            "stations[4] (C-1).parent: a county hub's parent must be a city station, 'C-360402' is a county hub",
        ),
        (
            {"id": "M-1", "tier": "city", "parent": "M-3604"},
            "stations[4] (M-1).parent: a city centre has no parent, got 'M-3604'",
        ),
        (
            {"id": "V-1", "tier": "village"},
            "stations[4] (V-1).parent: a village room needs a parent township station",
        ),
        (
            {"id": "T-1", "tier": "township"},
            "stations[4] (T-1).parent: a township station needs a parent county station",
        ),
    ],
)
def test_parent_must_be_exactly_one_tier_up(station: dict, message: str) -> None:
    data = _network(stations=[{"name": "某站", **station}])

    assert _errors_of(data) == [message]


def test_county_hub_may_head_a_network_alone() -> None:
    data = {"stations": [{"id": "C-1", "name": "某区社工总站", "tier": "county"}], "users": []}

    assert parse_network(yaml.safe_dump(data, allow_unicode=True)).stations[0].parent is None


def test_parent_cycle_is_reported_once() -> None:
    data = _network(
        stations=[
            {"id": "C-8", "name": "甲", "tier": "county", "parent": "C-9"},
            {"id": "C-9", "name": "乙", "tier": "county", "parent": "C-8"},
        ]
    )

    errors = _errors_of(data)

    assert [e for e in errors if "cycle" in e] == ["stations[4] (C-8).parent: cycle C-8 -> C-9 -> C-8"]


def test_all_cross_check_errors_are_reported_together() -> None:
    data = _network(
        users=[
            {
                "id": "w-1",
                "name": "甲",
                "station": "T-9",
                "role": "worker",
                "specialties": ["livelihood"],
                "capacity": 3,
            },
            {
                "id": "w-2",
                "name": "乙",
                "station": "T-8",
                "role": "worker",
                "specialties": ["livelihood"],
                "capacity": 3,
            },
        ]
    )

    with pytest.raises(NetworkFileError) as caught:
        parse_network(yaml.safe_dump(data, allow_unicode=True))

    assert str(caught.value).splitlines() == [
        "users[2] (w-1).station: unknown station 'T-9'",
        "users[3] (w-2).station: unknown station 'T-8'",
    ]


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "stations: [\n"])
def test_malformed_documents_raise_network_file_error(text: str) -> None:
    with pytest.raises(NetworkFileError):
        parse_network(text)


def test_dump_yaml_round_trips_and_keeps_chinese_readable() -> None:
    network = parse_network(CONTRACT_EXAMPLE)

    text = network.dump_yaml()

    assert "九江市社工支持中心" in text
    assert text.index("stations") < text.index("users")
    assert parse_network(text) == network


def test_stations_top_down_puts_parents_first() -> None:
    network = parse_network(CONTRACT_EXAMPLE)
    reversed_network = NetworkFile(stations=list(reversed(network.stations)), users=network.users)

    ordered = reversed_network.stations_top_down()

    seen: set[str] = set()
    for station in ordered:
        assert station.parent is None or station.parent in seen
        seen.add(station.id)


def test_load_network_file_prefixes_errors_with_the_path(tmp_path: Path) -> None:
    good = tmp_path / "network.yaml"
    good.write_text(CONTRACT_EXAMPLE, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONTRACT_EXAMPLE.replace('station: "T-360402101"', 'station: "T-999"'), encoding="utf-8")

    assert load_network_file(good) == parse_network(CONTRACT_EXAMPLE)
    with pytest.raises(NetworkFileError, match=r"bad\.yaml: users\[0\] \(w-0001\)\.station: unknown station"):
        load_network_file(bad)
    with pytest.raises(NetworkFileError, match="cannot read"):
        load_network_file(tmp_path / "missing.yaml")


# A township and its room added under a county the file does not define (as `network load` may).
ADDITION = """\
stations:
  - {id: "T-360402199", name: "新设街道社工站", tier: township, parent: "C-360402"}
  - {id: "V-360402199001", name: "新设社区社工室", tier: village, parent: "T-360402199"}
users:
  - {id: "w-0199", name: "新人", station: "T-360402199", role: worker, specialties: [elderly_care], capacity: 5}
  - {id: "s-0101", name: "老站长", station: "T-360402101", role: supervisor}
"""


def test_a_file_naming_stations_it_does_not_define_is_rejected_by_default() -> None:
    with pytest.raises(NetworkFileError) as caught:
        parse_network(ADDITION)

    assert str(caught.value).splitlines() == [
        "stations[0] (T-360402199).parent: unknown station 'C-360402'",
        "users[1] (s-0101).station: unknown station 'T-360402101'",
    ]


def test_deferring_outside_stations_accepts_them_and_lists_them_for_the_loader() -> None:
    network = parse_network(ADDITION, defer_outside_stations=True)

    assert network.outside_station_ids() == {"C-360402", "T-360402101"}
    assert network.outside_station_errors({"C-360402": "county", "T-360402101": "township"}) == []


def test_outside_stations_that_do_not_exist_are_unknown_in_the_usual_form() -> None:
    network = parse_network(ADDITION, defer_outside_stations=True)

    assert network.outside_station_errors({"T-360402101": "township"}) == [
        "stations[0] (T-360402199).parent: unknown station 'C-360402'"
    ]
    assert network.outside_station_errors({"C-360402": "county"}) == [
        "users[1] (s-0101).station: unknown station 'T-360402101'"
    ]


def test_an_outside_parent_must_be_one_tier_above_the_station() -> None:
    network = parse_network(ADDITION, defer_outside_stations=True)

    assert network.outside_station_errors({"C-360402": "township", "T-360402101": "township"}) == [
        "stations[0] (T-360402199).parent: a township station's parent must be a county station, "
        "'C-360402' is a township station"
    ]


def test_deferring_outside_stations_still_checks_what_the_file_defines() -> None:
    room_under_room = ADDITION.replace(
        "users:",
        '  - {id: "V-360402199002", name: "错挂社工室", tier: village, parent: "V-360402199001"}\nusers:',
    )
    duplicate = ADDITION.replace('id: "V-360402199001"', 'id: "T-360402199"')

    with pytest.raises(NetworkFileError) as caught:
        parse_network(room_under_room, defer_outside_stations=True)
    assert str(caught.value).splitlines() == [
        "stations[2] (V-360402199002).parent: a village room's parent must be a township station, "
        "'V-360402199001' is a village room"
    ]
    with pytest.raises(NetworkFileError, match=r"stations\[1\] \(T-360402199\)\.id: duplicate station id"):
        parse_network(duplicate, defer_outside_stations=True)


RETIERED = """\
stations:
  - {id: "T-360402101", name: "十里街道社工站", tier: county, parent: "M-3604"}
  - {id: "T-360402198", name: "新设街道社工站", tier: township, parent: "T-360402101"}
"""


def test_stations_outside_the_file_must_still_fit_under_a_station_it_moves_to_another_tier() -> None:
    network = parse_network(RETIERED, defer_outside_stations=True)
    rooms = [(f"V-36040210100{n}", "village", "T-360402101") for n in range(7, 0, -1)]

    assert network.outside_children_errors(rooms) == [
        "stations[0] (T-360402101).tier: 7 stations below it, not in this file, need a township station as "
        "parent: V-360402101001, V-360402101002, V-360402101003, V-360402101004, V-360402101005 and 2 more"
    ]
    assert network.outside_children_errors(rooms[:1]) == [
        "stations[0] (T-360402101).tier: 1 station below it, not in this file, needs a township station as "
        "parent: V-360402101007"
    ]


def test_stations_outside_the_file_that_still_fit_or_that_it_defines_are_not_its_concern() -> None:
    network = parse_network(RETIERED, defer_outside_stations=True)

    assert network.outside_children_errors([("T-360402102", "township", "T-360402101")]) == []  # fits a county
    assert network.outside_children_errors([("T-360402198", "village", "T-360402101")]) == []  # the file's own
    assert network.outside_children_errors([("V-360402102001", "village", "T-360402102")]) == []  # another parent
