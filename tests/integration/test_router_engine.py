"""The router engine from outside, with one intake and one router replica: offers that expire or are
declined fall through to the next worker and then up a tier, sibling stations come before the parent,
queued cases wait for capacity, resolve deadlines warn and breach once, and supervisors' actions.

Each scenario has its own county subtree under one city and its own category, so no worker (and no
sibling-station or parent-tier search) is shared between scenarios.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

from schemas.commands import CommandAction
from tests.integration.router_harness import SWEEP_INTERVAL, SYSTEM_USER, RouterHarness, running_harness
from tests.support.case_checks import at, main_path, sequence_problems
from tests.support.network_builder import NetworkBuilder, Subtree

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Seconds-long deadlines so timers fire within the test; each risk level serves one kind of scenario.
POLICY = """\
version: 1
sla:
  critical: {accept: PT2S, resolve: PT1H}   # offers expire: reoffer, then escalate
  high:     {accept: PT5S, resolve: PT6S}   # the resolve deadline warns and breaches
  medium:   {accept: PT1H, resolve: P1D}    # only commands and capacity move these
  low:      {accept: PT1H, resolve: P1D}
load_weight: {critical: 3, high: 2, medium: 1, low: 1}
offers_per_tier: 2
lateral: true
rules:
  - name: start-at-county
    when: {category: [family_support]}
    tier: county
  - name: certified
    when: {category: [community_governance]}
    tier: township
    require: {certification: assistant}
  - name: default
    tier: township
"""
ACCEPT_WINDOW = timedelta(seconds=2)  # critical
RESOLVE_WINDOW = timedelta(seconds=6)  # high

CITY = "M-RT"
EXPIRY = "elderly_care"
LATERAL = "social_assistance"
QUEUE = "disability_support"
RESOLVE = "mental_health"
DECLINE = "livelihood"
MANUAL = "family_support"
WITHDRAW = "medical_social_work"
UNRELATED = "resource_linkage"  # a specialty no scenario asks for
MOVED = "child_protection"
CERTIFIED = "community_governance"  # the `certified` rule: assistant or above
SHRUNK = "crisis_intervention"


def build_network() -> tuple[NetworkBuilder, dict[str, Subtree]]:
    net = NetworkBuilder()
    net.station(CITY, "city")
    net.system_user(SYSTEM_USER)
    trees = {
        name: net.subtree(name, city=CITY)
        for name in ("EX", "LA", "QU", "RS", "DE", "MA", "WD", "DM", "DK", "DL", "DH")
    }

    net.worker("ex-t1", "T-EX-1", [EXPIRY])
    net.worker("ex-t2", "T-EX-1", [EXPIRY])
    net.worker("ex-c1", "C-EX", [EXPIRY])

    net.worker("la-off", "T-LA-1", [LATERAL], on_duty=False)
    net.worker("la-other", "T-LA-1", [UNRELATED])
    net.worker("la-sib", "T-LA-2", [LATERAL])
    net.worker("la-c1", "C-LA", [LATERAL])

    net.worker("qu-t1", "T-QU-1", [QUEUE], on_duty=False)
    net.worker("qu-c1", "C-QU", [QUEUE], on_duty=False)

    net.worker("rs-t1", "T-RS-1", [RESOLVE])

    net.worker("de-t1", "T-DE-1", [DECLINE], capacity=1)
    net.worker("de-t2", "T-DE-1", [DECLINE], capacity=1)
    net.worker("de-c1", "C-DE", [DECLINE])

    net.worker("ma-t1", "T-MA-1", [MANUAL])
    net.worker("ma-off", "T-MA-1", [MANUAL], on_duty=False)
    net.worker("ma-c1", "C-MA", [MANUAL])
    net.worker("ma-c2", "C-MA", [MANUAL])
    net.supervisor("ma-sup", "C-MA")

    net.worker("wd-t1", "T-WD-1", [WITHDRAW])
    net.worker("wd-t2", "T-WD-1", [WITHDRAW])

    # Directory changes under open cases: a worker moved, certified lower, given less capacity, or
    # made a supervisor (each in a county of their own).
    for tree, specialty in (("DM", MOVED), ("DK", CERTIFIED), ("DH", MOVED)):
        for n in (1, 2):
            net.worker(f"{tree.lower()}-t{n}", f"T-{tree}-1", [specialty])
    net.worker("dl-t1", "T-DL-1", [SHRUNK])  # gets both cases of its scenario
    net.worker("dl-t2", "T-DL-2", [SHRUNK])  # the sibling township's
    return net, trees


@pytest_asyncio.fixture(scope="module")
async def bench(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[RouterHarness, dict[str, Subtree]]]:
    network, trees = build_network()
    async with running_harness(tmp_path_factory.mktemp("router-engine"), policy_yaml=POLICY, network=network) as h:
        print(f"\nrouter engine bench up: {h.timings}")
        yield h, trees


@pytest.fixture
def harness(bench: tuple[RouterHarness, dict[str, Subtree]]) -> RouterHarness:
    return bench[0]


@pytest.fixture
def trees(bench: tuple[RouterHarness, dict[str, Subtree]]) -> dict[str, Subtree]:
    return bench[1]


def explain(harness: RouterHarness, case_id: str) -> str:
    return harness.events.timeline(case_id)


def assert_gap_free(harness: RouterHarness, case_id: str) -> None:
    problems = sequence_problems(harness.events.of(case_id))
    assert not problems, f"{problems}\n{explain(harness, case_id)}"


async def assert_load_invariant(harness: RouterHarness) -> None:
    discrepancies = [dict(row) for row in await harness.load_discrepancies()]
    assert discrepancies == [], f"worker_load disagrees with the cases held: {discrepancies}"


async def test_unanswered_offers_expire_then_reoffer_at_same_tier_then_escalate(
    harness: RouterHarness, trees: dict[str, Subtree]
) -> None:
    case = await harness.submit_case(trees["EX"].room(), EXPIRY, "critical")

    await harness.events.wait_for_count(case, "assigned", 3, within=20)
    events = harness.events.of(case)
    path = main_path(events)
    assert path[:8] == [
        "received", "routed", "assigned", "offer_expired", "assigned", "offer_expired", "escalated", "assigned"
    ], explain(harness, case)  # fmt: skip
    assigned = harness.events.named(case, "assigned")
    expired = harness.events.named(case, "offer_expired")
    township_offers = [a["data"] for a in assigned[:2]]
    assert {o["worker_id"] for o in township_offers} == {"ex-t1", "ex-t2"}, explain(harness, case)
    for offer in township_offers:
        assert (offer["tier"], offer["station_id"], offer["status"]) == ("township", "T-EX-1", "offered")
    for offer, expiry in zip(township_offers, expired, strict=False):
        assert expiry["data"]["worker_id"] == offer["worker_id"]
        assert expiry["data"]["status"] == "routed"
        assert at(expiry["time"]) >= at(offer["accept_by"]) - timedelta(milliseconds=50), explain(harness, case)
    # Each lapse is an accept-deadline breach first (CONTRACT §4), right before its offer_expired.
    breaches = [e["data"] for e in harness.events.named(case, "sla_breached") if e["data"]["kind"] == "accept"]
    for offer, breach, expiry in zip(township_offers, breaches, expired, strict=False):
        assert (breach["worker_id"], at(breach["deadline"])) == (offer["worker_id"], at(offer["accept_by"]))
        assert breach["sequence"] == expiry["data"]["sequence"] - 1, explain(harness, case)
    assert len(breaches) >= len(township_offers), explain(harness, case)

    escalated = harness.events.named(case, "escalated")[0]["data"]
    assert (escalated["reason"], escalated["from_tier"], escalated["from_station_id"]) == (
        "offer_expired", "township", "T-EX-1"
    )  # fmt: skip
    assert (escalated["tier"], escalated["station_id"]) == ("county", "C-EX")
    county_offer = assigned[2]["data"]
    assert (county_offer["worker_id"], county_offer["tier"], county_offer["station_id"]) == ("ex-c1", "county", "C-EX")

    # Each township offer was warned once, at 80 % of its window, before it expired.
    warnings = [e for e in harness.events.named(case, "sla_warning") if e["data"]["kind"] == "accept"]
    for offer, expiry in zip(township_offers, expired, strict=False):
        mine = [w for w in warnings if at(w["data"]["deadline"]) == at(offer["accept_by"])]
        assert len(mine) == 1, f"accept warnings of {offer['worker_id']}: {mine}\n{explain(harness, case)}"
        assert offer["sequence"] < mine[0]["data"]["sequence"] < expiry["data"]["sequence"]
        warned_after = at(mine[0]["time"]) - (at(offer["accept_by"]) - ACCEPT_WINDOW)
        assert warned_after >= ACCEPT_WINDOW * 0.8 - timedelta(milliseconds=100), explain(harness, case)
    assert_gap_free(harness, case)


async def test_lateral_sibling_station_is_tried_before_moving_up(
    harness: RouterHarness, trees: dict[str, Subtree]
) -> None:
    case = await harness.submit_case(trees["LA"].room(township=0), LATERAL, "medium")

    await harness.events.wait_for_types(case, "assigned", within=15)
    path = main_path(harness.events.of(case))
    assert path == ["received", "routed", "assigned"], explain(harness, case)
    routed = harness.events.named(case, "routed")[0]["data"]
    assert (routed["tier"], routed["station_id"]) == ("township", "T-LA-1")
    offer = harness.events.named(case, "assigned")[0]["data"]
    assert (offer["worker_id"], offer["tier"], offer["station_id"]) == ("la-sib", "township", "T-LA-2")
    assert_gap_free(harness, case)


async def test_queued_case_is_assigned_when_a_worker_comes_on_duty(
    harness: RouterHarness, trees: dict[str, Subtree]
) -> None:
    case = await harness.submit_case(trees["QU"].room(), QUEUE, "medium")

    await harness.events.wait_for_types(case, "queued", within=15)
    assert main_path(harness.events.of(case)) == ["received", "routed", "escalated", "escalated", "queued"], explain(
        harness, case
    )
    assert [e["data"]["reason"] for e in harness.events.named(case, "escalated")] == ["no_capacity"] * 2
    queued = harness.events.named(case, "queued")[0]["data"]
    assert (queued["waiting_at"], queued["status"]) == (CITY, "queued"), explain(harness, case)

    harness.network.set_on_duty("qu-t1", True)
    await harness.load_network()
    on_duty_at = time.monotonic()
    await harness.events.wait_for_types(case, "assigned", within=10)
    waited = time.monotonic() - on_duty_at
    offer = harness.events.named(case, "assigned")[0]["data"]
    assert offer["worker_id"] == "qu-t1" and offer["status"] == "offered", explain(harness, case)
    assert waited < 5.0, f"the queued case waited {waited:.1f}s for the worker who came on duty"
    assert_gap_free(harness, case)


async def test_resolve_deadline_warns_then_breaches_exactly_once(
    harness: RouterHarness, trees: dict[str, Subtree]
) -> None:
    case = await harness.submit_case(trees["RS"].room(), RESOLVE, "high")
    await harness.events.wait_for_types(case, "assigned", within=15)
    accepted = await harness.command(case, "accept", "rs-t1")
    assert (accepted["outcome"], accepted["status"]) == ("applied", "accepted"), accepted

    await harness.events.wait_for(
        lambda: any(e["data"]["kind"] == "resolve" for e in harness.events.named(case, "sla_breached")),
        within=RESOLVE_WINDOW.total_seconds() + 5,
        what="the resolve breach",
    )
    # A repeat would come from a later sweep: give several sweeps the chance to (wrongly) fire again.
    await asyncio.sleep(SWEEP_INTERVAL * 5)
    await harness.settle()

    def of_kind(name: str) -> list[dict[str, Any]]:
        return [e for e in harness.events.named(case, name) if e["data"]["kind"] == "resolve"]

    warnings, breaches = of_kind("sla_warning"), of_kind("sla_breached")
    assert (len(warnings), len(breaches)) == (1, 1), explain(harness, case)
    received_at = at(harness.events.named(case, "received")[0]["time"])
    deadline = at(breaches[0]["data"]["deadline"])
    assert at(warnings[0]["data"]["deadline"]) == deadline
    assert abs(deadline - (received_at + RESOLVE_WINDOW)) < timedelta(seconds=1), (deadline, received_at)
    assert warnings[0]["data"]["sequence"] < breaches[0]["data"]["sequence"]
    assert at(warnings[0]["time"]) >= received_at + RESOLVE_WINDOW * 0.8 - timedelta(milliseconds=500)
    assert at(warnings[0]["time"]) < deadline <= at(breaches[0]["time"]) + timedelta(milliseconds=50)
    assert "offer_expired" not in harness.events.types(case), explain(harness, case)
    assert_gap_free(harness, case)


async def test_decline_frees_load_and_falls_through(harness: RouterHarness, trees: dict[str, Subtree]) -> None:
    case = await harness.submit_case(trees["DE"].room(), DECLINE, "medium")
    first = (await harness.events.wait_for_count(case, "assigned", 1, within=15))[0]["data"]["worker_id"]
    second = ({"de-t1", "de-t2"} - {first}).pop()
    assert await harness.load_of(first) == 1

    answer = await harness.command(case, "decline", first, reason="on leave this week")
    assert answer["outcome"] == "applied", answer
    offers = await harness.events.wait_for_count(case, "assigned", 2, within=10)
    declined = harness.events.named(case, "declined")[0]["data"]
    assert (declined["worker_id"], declined["reason"]) == (first, "on leave this week")
    assert offers[1]["data"]["worker_id"] == second, explain(harness, case)
    assert (await harness.load_of(first), await harness.load_of(second)) == (0, 1)

    answer = await harness.command(case, "decline", second, reason="too far away")
    assert answer["outcome"] == "applied", answer
    offers = await harness.events.wait_for_count(case, "assigned", 3, within=10)
    assert main_path(harness.events.of(case)) == [
        "received", "routed", "assigned", "declined", "assigned", "declined", "escalated", "assigned"
    ], explain(harness, case)  # fmt: skip
    escalated = harness.events.named(case, "escalated")[0]["data"]
    assert (escalated["reason"], escalated["tier"], escalated["station_id"]) == ("declined", "county", "C-DE")
    assert offers[2]["data"]["worker_id"] == "de-c1"
    assert (await harness.load_of(first), await harness.load_of(second), await harness.load_of("de-c1")) == (0, 0, 1)
    assert_gap_free(harness, case)
    await assert_load_invariant(harness)


async def test_an_offer_to_a_worker_who_goes_off_duty_moves_on_without_waiting_for_its_deadline(
    harness: RouterHarness, trees: dict[str, Subtree]
) -> None:
    case = await harness.submit_case(trees["WD"].room(), WITHDRAW, "medium")
    first = (await harness.events.wait_for_count(case, "assigned", 1, within=15))[0]["data"]["worker_id"]
    second = ({"wd-t1", "wd-t2"} - {first}).pop()

    harness.network.set_on_duty(first, False)
    await harness.load_network()
    off_duty_at = time.monotonic()
    late = await harness.command(case, "accept", first)  # before or after the sweep: refused either way

    offers = await harness.events.wait_for_count(case, "assigned", 2, within=10)
    waited = time.monotonic() - off_duty_at
    assert late["outcome"] in ("conflict", "forbidden"), late
    assert waited < 5.0, f"the offer to the off-duty worker stood {waited:.1f}s (its deadline is an hour away)"
    withdrawn = harness.events.named(case, "offer_expired")[0]["data"]
    assert (withdrawn["worker_id"], withdrawn["reason"]) == (first, "the worker went off duty"), explain(harness, case)
    assert offers[1]["data"]["worker_id"] == second, explain(harness, case)
    assert main_path(harness.events.of(case)) == ["received", "routed", "assigned", "offer_expired", "assigned"]
    assert (await harness.load_of(first), await harness.load_of(second)) == (0, 1)
    assert_gap_free(harness, case)
    await assert_load_invariant(harness)


async def test_offers_the_directory_no_longer_allows_are_withdrawn_and_cannot_be_accepted(
    harness: RouterHarness, trees: dict[str, Subtree]
) -> None:
    """`caselink network load` moves one offered worker to another township, certifies another
    below what their case needs, and lowers a third one's capacity below their load."""
    cases = {
        tree: await harness.submit_case(trees[tree].room(), category, "medium")
        for tree, category in (("DM", MOVED), ("DK", CERTIFIED))
    }
    first = {
        tree: (await harness.events.wait_for_count(case, "assigned", 1, within=15))[0]["data"]["worker_id"]
        for tree, case in cases.items()
    }
    shrunk = [await harness.submit_case(trees["DL"].room(), SHRUNK, "medium") for _ in range(2)]
    for case in shrunk:
        offer = (await harness.events.wait_for_count(case, "assigned", 1, within=15))[0]["data"]
        assert offer["worker_id"] == "dl-t1", explain(harness, case)
    users = harness.network.users
    users[first["DM"]]["station"] = "T-DM-2"
    users[first["DK"]]["certification"] = "none"
    users["dl-t1"]["capacity"] = 1  # two offers of weight 1 out
    await harness.load_network()
    changed_at = time.monotonic()
    late = {tree: await harness.command(case, "accept", first[tree]) for tree, case in cases.items()}

    reasons = {"DM": "the worker moved to T-DM-2", "DK": "the worker is certified none; the case needs assistant"}
    for tree, case in cases.items():
        offers = await harness.events.wait_for_count(case, "assigned", 2, within=10)
        assert late[tree]["outcome"] in ("conflict", "forbidden"), late[tree]
        withdrawn = harness.events.named(case, "offer_expired")[0]["data"]
        assert (withdrawn["worker_id"], withdrawn["reason"]) == (first[tree], reasons[tree]), explain(harness, case)
        second = offers[1]["data"]["worker_id"]
        assert second == ({f"{tree.lower()}-t1", f"{tree.lower()}-t2"} - {first[tree]}).pop(), explain(harness, case)
        assert (await harness.load_of(first[tree]), await harness.load_of(second)) == (0, 1)
        assert_gap_free(harness, case)

    # One of the two offers goes (to the sibling township), which brings dl-t1 back within capacity.
    def withdrawn_from_dl_t1() -> list[str]:
        return [case for case in shrunk if harness.events.named(case, "offer_expired")]

    await harness.events.wait_for(withdrawn_from_dl_t1, within=10, what="a withdrawal from dl-t1")
    waited = time.monotonic() - changed_at
    assert waited < 5.0, f"offers the directory no longer allows stood {waited:.1f}s (their deadline is an hour away)"
    await harness.settle()
    moved_on = withdrawn_from_dl_t1()
    assert len(moved_on) == 1 and len(harness.events.named(moved_on[0], "assigned")) == 2, explain(harness, moved_on[0])
    withdrawn = harness.events.named(moved_on[0], "offer_expired")[0]["data"]
    assert withdrawn["reason"] == "the worker has 2 in use of a capacity lowered to 1"
    assert harness.events.named(moved_on[0], "assigned")[1]["data"]["worker_id"] == "dl-t2"
    kept = ({*shrunk} - {moved_on[0]}).pop()
    assert harness.events.last(kept) == "assigned", explain(harness, kept)
    assert (await harness.load_of("dl-t1"), await harness.load_of("dl-t2")) == (1, 1)
    assert (await harness.command(kept, "accept", "dl-t1"))["outcome"] == "applied"
    await assert_load_invariant(harness)


async def test_a_case_accepted_by_a_worker_made_supervisor_goes_to_another_worker(
    harness: RouterHarness, trees: dict[str, Subtree]
) -> None:
    case = await harness.submit_case(trees["DH"].room(), MOVED, "medium")
    holder = (await harness.events.wait_for_count(case, "assigned", 1, within=15))[0]["data"]["worker_id"]
    accepted = await harness.command(case, "accept", holder)
    assert accepted["outcome"] == "applied", accepted

    harness.network.supervisor(holder, "T-DH-1")
    await harness.load_network()

    offers = await harness.events.wait_for_count(case, "assigned", 2, within=10)
    again = offers[1]["data"]
    other = ({"dh-t1", "dh-t2"} - {holder}).pop()
    assert again["worker_id"] == other, explain(harness, case)
    assert again["explanation"]["handed_back"] == {
        "from_worker_id": holder,
        "reason": "the worker is no longer a worker here",
    }
    assert main_path(harness.events.of(case)) == ["received", "routed", "assigned", "accepted", "assigned"]
    refused = await harness.command(case, "start", holder)  # not theirs, and no longer accepted
    assert refused["outcome"] in ("conflict", "forbidden"), refused
    assert (await harness.load_of(holder), await harness.load_of(other)) == (0, 1)
    assert_gap_free(harness, case)
    await assert_load_invariant(harness)


async def test_manual_actions(harness: RouterHarness, trees: dict[str, Subtree]) -> None:
    events = harness.events
    case = await harness.submit_case(trees["MA"].room(), MANUAL, "medium")
    offer = (await events.wait_for_count(case, "assigned", 1, within=15))[0]["data"]
    assert (offer["tier"], offer["station_id"]) == ("county", "C-MA"), explain(harness, case)

    # Refused actions answer with a result and change nothing.
    head = await harness.last_sequence(case)
    off_duty = await harness.command(case, "assign", "ma-sup", worker_id="ma-off")
    assert off_duty["outcome"] == "conflict", off_duty
    not_theirs = await harness.command(case, "accept", "ma-t1")
    assert not_theirs["outcome"] == "forbidden", not_theirs
    assert await harness.last_sequence(case) == head, explain(harness, case)

    sent_back = await harness.command(case, "refer_back", "ma-sup", reason="the township can handle it")
    assert sent_back["outcome"] == "applied", sent_back
    offers = await events.wait_for_count(case, "assigned", 2, within=10)
    referred = events.named(case, "referred_back")[0]["data"]
    assert (referred["from_tier"], referred["from_station_id"]) == ("county", "C-MA")
    assert (referred["tier"], referred["station_id"]) == ("township", "T-MA-1")
    assert (offers[1]["data"]["worker_id"], offers[1]["data"]["station_id"]) == ("ma-t1", "T-MA-1")
    assert await harness.load_of(offer["worker_id"]) == 0

    escalated = await harness.command(case, "escalate", "ma-sup", reason="needs the hub after all")
    assert escalated["outcome"] == "applied", escalated
    offers = await events.wait_for_count(case, "assigned", 3, within=10)
    step_up = events.named(case, "escalated")[-1]["data"]
    assert (step_up["reason"], step_up["tier"], step_up["station_id"]) == ("manual", "county", "C-MA")
    holder = offers[2]["data"]["worker_id"]
    assert holder in {"ma-c1", "ma-c2"} and await harness.load_of("ma-t1") == 0, explain(harness, case)

    steps: list[tuple[CommandAction, dict[str, str], str]] = [
        ("accept", {}, "accepted"),
        ("start", {}, "in_progress"),
        ("resolve", {"outcome": "linked to the family service centre"}, "resolved"),
    ]
    for action, fields, status in steps:
        answer = await harness.command(case, action, holder, **fields)
        assert (answer["outcome"], answer["status"]) == ("applied", status), answer
    await events.wait_for_types(case, "resolved", within=10)
    assert main_path(events.of(case))[-4:] == ["assigned", "accepted", "started", "resolved"], explain(harness, case)
    assert await harness.load_of(holder) == 0
    assert_gap_free(harness, case)

    other = await harness.submit_case(trees["MA"].room(), MANUAL, "medium")
    offered_to = (await events.wait_for_count(other, "assigned", 1, within=15))[0]["data"]["worker_id"]
    closed = await harness.command(other, "close", "ma-sup", reason="duplicate referral")
    assert (closed["outcome"], closed["status"]) == ("applied", "closed"), closed
    await events.wait_for_types(other, "closed", within=10)
    assert await harness.load_of(offered_to) == 0
    assert_gap_free(harness, other)
    await assert_load_invariant(harness)
