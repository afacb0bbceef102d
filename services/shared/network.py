"""The network file (CONTRACT §5): stations, users and their notification channels, validated as a whole."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from schemas.vocabulary import CERTIFICATIONS, TIERS, Category, Certification, Role, Tier

TIER_RANK: dict[str, int] = {tier: rank for rank, tier in enumerate(TIERS)}
TIER_LABEL: dict[str, str] = {
    "village": "village room",
    "township": "township station",
    "county": "county hub",
    "city": "city centre",
}
PARENT_TIER: dict[str, str] = {"county": "city", "township": "county", "village": "township"}
MISPLACED_SHOWN = 5  # ids named per line when stations outside a file no longer fit under their parent
CERTIFICATION_RANK: dict[str, int] = {name: rank for rank, name in enumerate(CERTIFICATIONS)}

# Ids travel in URLs (webhook paths, REST routes) and Kafka keys, so they stay plain ASCII.
Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


def _email_address(value: str) -> str:
    local, at, domain = value.partition("@")
    if not (local and at and "." in domain) or any(c.isspace() for c in value):
        raise ValueError(f"must be an email address, got {value!r}")
    return value


def _phone_number(value: str) -> str:
    digits = value.removeprefix("+").replace("-", "").replace(" ", "")
    if not (digits.isascii() and digits.isdigit() and 5 <= len(digits) <= 20):
        raise ValueError(f"must be a phone number, got {value!r}")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookChannel(_Strict):
    channel: Literal["webhook"]
    url: HttpUrl
    secret: str | None = None


class WecomChannel(_Strict):
    channel: Literal["wecom"]
    url: HttpUrl


class DingtalkChannel(_Strict):
    channel: Literal["dingtalk"]
    url: HttpUrl
    secret: str | None = None


class EmailChannel(_Strict):
    channel: Literal["email"]
    address: Annotated[str, AfterValidator(_email_address)]


class SmsChannel(_Strict):
    channel: Literal["sms"]
    phone: Annotated[str, AfterValidator(_phone_number)]
    template_id: str | None = None


class InappChannel(_Strict):
    channel: Literal["inapp"]


NotifyChannel = Annotated[
    WebhookChannel | WecomChannel | DingtalkChannel | EmailChannel | SmsChannel | InappChannel,
    Field(discriminator="channel"),
]


class StationSpec(_Strict):
    id: Id
    name: Name
    tier: Tier
    parent: Id | None = None
    notify: list[NotifyChannel] = []


# Far above any caseload (loads are weighted open cases), and so far below PostgreSQL's integer
# that a load plus a case's weight never overflows the column.
MAX_CAPACITY = 100_000


class UserSpec(_Strict):
    id: Id
    name: Name
    station: Id | None = None
    role: Role
    specialties: list[Category] = []
    certification: Certification = "none"
    capacity: int = Field(default=0, ge=0, le=MAX_CAPACITY)
    on_duty: bool = True
    notify: list[NotifyChannel] = []


class _CrossCheckFailed(ValueError):
    """Carries every cross-check error at once, so a file's author fixes them in one pass."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# The validation context key of `parse_network(..., defer_outside_stations=True)`.
_DEFER_OUTSIDE_STATIONS = "defer_outside_stations"


class NetworkFile(_Strict):
    stations: list[StationSpec] = []
    users: list[UserSpec] = []

    @model_validator(mode="after")
    def _check_references_and_tiers(self, info: ValidationInfo) -> NetworkFile:
        # Built in code or parsed by default, a file stands alone: a station it does not define is
        # unknown. `network load` defers those references to the database (`outside_station_errors`).
        deferred = bool(info.context and info.context.get(_DEFER_OUTSIDE_STATIONS))
        errors = self._errors(outside_tiers=None if deferred else {})
        if errors:
            raise _CrossCheckFailed(errors)
        return self

    def outside_station_ids(self) -> set[str]:
        """The stations this file names (as a parent or a user's station) without defining them."""
        defined = {s.id for s in self.stations}
        named = {s.parent for s in self.stations} | {u.station for u in self.users}
        return {station_id for station_id in named if station_id is not None and station_id not in defined}

    def outside_station_errors(self, outside_tiers: Mapping[str, str]) -> list[str]:
        """Check the references to stations outside the file against those that exist (id -> tier, e.g.
        from the database): an unknown station or a parent at the wrong tier, one line each."""
        return self._errors(outside_tiers=outside_tiers)

    def outside_children_errors(self, children: Iterable[tuple[str, str, str]]) -> list[str]:
        """Check stations outside the file whose parent it defines ((id, tier, parent id) each, e.g.
        from the database) against the tier the file gives that parent: one line per parent."""
        index = {s.id: i for i, s in reversed(list(enumerate(self.stations)))}
        tiers = {s.id: str(s.tier) for s in self.stations}
        misplaced: dict[str, dict[str, list[str]]] = {}  # parent id -> the tier its children need -> their ids
        for child_id, child_tier, parent_id in children:
            needed = PARENT_TIER.get(child_tier)
            if needed is None or child_id in tiers or parent_id not in tiers or needed == tiers[parent_id]:
                continue  # the file's own stations were checked with the file
            misplaced.setdefault(parent_id, {}).setdefault(needed, []).append(child_id)
        errors: list[str] = []
        for parent_id, needs in sorted(misplaced.items(), key=lambda item: index[item[0]]):
            for needed, ids in sorted(needs.items()):
                ids.sort()
                shown = ", ".join(ids[:MISPLACED_SHOWN]) + (
                    f" and {len(ids) - MISPLACED_SHOWN} more" if len(ids) > MISPLACED_SHOWN else ""
                )
                below = "1 station below it" if len(ids) == 1 else f"{len(ids)} stations below it"
                errors.append(
                    f"stations[{index[parent_id]}] ({parent_id}).tier: {below}, not in this file, "
                    f"{'needs' if len(ids) == 1 else 'need'} a {TIER_LABEL[needed]} as parent: {shown}"
                )
        return errors

    def _errors(self, *, outside_tiers: Mapping[str, str] | None) -> list[str]:
        # None: a reference to a station the file does not define is left for a later check.
        return _station_errors(self.stations, outside_tiers) + _user_errors(self.users, self.stations, outside_tiers)

    def stations_top_down(self) -> list[StationSpec]:
        """Return the stations ordered so that every parent comes before its children."""
        return sorted(self.stations, key=lambda s: -TIER_RANK[s.tier])

    def dump_yaml(self) -> str:
        """Render the network as YAML that parse_network reads back to an equal NetworkFile."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=None, width=120)


def _station_errors(stations: list[StationSpec], outside_tiers: Mapping[str, str] | None) -> list[str]:
    errors: list[str] = []
    first_index: dict[str, int] = {}
    for i, station in enumerate(stations):
        if station.id in first_index:
            first = first_index[station.id]
            errors.append(f"stations[{i}] ({station.id}).id: duplicate station id, first at stations[{first}]")
        else:
            first_index[station.id] = i
    by_id = {s.id: s for s in reversed(stations)}
    # A station the file defines wins over one of the same id outside it: loading the file replaces it.
    tiers: dict[str, str] = {**(outside_tiers or {}), **{s.id: str(s.tier) for s in by_id.values()}}

    for i, station in enumerate(stations):
        if outside_tiers is None and station.parent is not None and station.parent not in tiers:
            continue  # deferred: the parent may exist outside the file
        error = _parent_error(station, tiers)
        if error:
            errors.append(f"stations[{i}] ({station.id}).parent: {error}")

    in_reported_cycle: set[str] = set()
    for station in stations:
        chain: list[str] = []
        current: str | None = station.id
        while current is not None and current in by_id and current not in chain:
            chain.append(current)
            current = by_id[current].parent
        if current is None or current not in chain:
            continue
        cycle = chain[chain.index(current) :]
        if in_reported_cycle.isdisjoint(cycle):
            in_reported_cycle.update(cycle)
            path = " -> ".join([*cycle, current])
            errors.append(f"stations[{first_index[current]}] ({current}).parent: cycle {path}")
    return errors


def _parent_error(station: StationSpec, tiers: Mapping[str, str]) -> str | None:
    label = TIER_LABEL[station.tier]
    if station.tier == "city":
        return f"a city centre has no parent, got {station.parent!r}" if station.parent else None
    expected = PARENT_TIER[station.tier]
    if station.parent is None:
        # A county hub may head a network on its own; below it every station needs its hub.
        return None if station.tier == "county" else f"a {label} needs a parent {expected} station"
    parent_tier = tiers.get(station.parent)
    if parent_tier is None:
        return f"unknown station {station.parent!r}"
    if parent_tier != expected:
        parent_label = TIER_LABEL.get(parent_tier, parent_tier)
        return f"a {label}'s parent must be a {expected} station, {station.parent!r} is a {parent_label}"
    return None


def _user_errors(
    users: list[UserSpec], stations: list[StationSpec], outside_tiers: Mapping[str, str] | None
) -> list[str]:
    errors: list[str] = []
    station_ids = {s.id for s in stations}
    if outside_tiers is not None:
        station_ids.update(outside_tiers)
    first_index: dict[str, int] = {}
    for i, user in enumerate(users):
        where = f"users[{i}] ({user.id})"
        if user.id in first_index:
            errors.append(f"{where}.id: duplicate user id, first at users[{first_index[user.id]}]")
        else:
            first_index[user.id] = i
        if user.station is None:
            if user.role != "system":
                errors.append(f"{where}.station: a {user.role} needs a home station")
        elif user.station not in station_ids and outside_tiers is not None:
            errors.append(f"{where}.station: unknown station {user.station!r}")
        if user.role == "worker":
            if user.capacity <= 0:
                errors.append(f"{where}.capacity: a worker needs capacity > 0")
            if not user.specialties:
                errors.append(f"{where}.specialties: a worker needs at least one specialty")
    return errors


class NetworkFileError(ValueError):
    """A network file that cannot be used; `errors` lists every problem found, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parse_network(text: str, *, defer_outside_stations: bool = False) -> NetworkFile:
    """Parse and validate the YAML text of a network file.

    With `defer_outside_stations`, parents and users' stations may name stations the file does not
    define; the caller must check those with `NetworkFile.outside_station_errors` (`load_network` does).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NetworkFileError([f"invalid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise NetworkFileError(["a network file is a mapping with 'stations' and 'users'"])
    try:
        context = {_DEFER_OUTSIDE_STATIONS: defer_outside_stations}
        return NetworkFile.model_validate(data, context=context)
    except ValidationError as exc:
        raise NetworkFileError(_describe(exc, data)) from exc


def load_network_file(path: str | os.PathLike[str], *, defer_outside_stations: bool = False) -> NetworkFile:
    """Read, parse and validate a network file (see `parse_network`); errors are prefixed with the path."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NetworkFileError([f"{os.fspath(path)}: cannot read: {exc}"]) from exc
    try:
        return parse_network(text, defer_outside_stations=defer_outside_stations)
    except NetworkFileError as exc:
        raise NetworkFileError([f"{os.fspath(path)}: {line}" for line in exc.errors]) from exc


def _describe(exc: ValidationError, data: Any) -> list[str]:
    lines: list[str] = []
    for error in exc.errors():
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _CrossCheckFailed):
            lines.extend(cause.errors)
            continue
        message = str(cause) if error["type"] == "value_error" and cause else error["msg"]
        where = _describe_location(error["loc"], data)
        lines.append(f"{where}: {message}" if where else message)
    return lines


def _describe_location(loc: tuple[int | str, ...], data: Any) -> str:
    """Turn ('users', 3, 'notify', 0, 'webhook', 'url') into 'users[3] (w-0004).notify[0].url'."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                out += f" ({node['id']})"
            continue
        if isinstance(node, dict) and part not in node and node.get("channel") == part:
            continue  # the discriminated union's tag, not a key the author wrote
        out += f".{part}" if out else part
        node = node.get(part) if isinstance(node, dict) else None
    return out
