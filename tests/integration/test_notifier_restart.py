"""The notifier as a real process on real PostgreSQL and Tansu, stopped in the middle of a
stream of tasks: nobody is pushed twice, nobody is missed, and no resident's id number,
phone or name reaches a push or a log line."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from schemas.referral import id_number_check_char
from services.notifier.dispatcher import kafka_origin_reader
from services.shared.settings import Settings
from tests.integration.router_harness import SYSTEM_USER, RouterHarness, running_harness
from tests.support.network_builder import NetworkBuilder
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

POLICY = """\
version: 1
sla:
  critical: {accept: PT1H, resolve: P1D}
  high:     {accept: PT1H, resolve: P1D}
  medium:   {accept: PT1H, resolve: P1D}
  low:      {accept: PT1H, resolve: P1D}
load_weight: {critical: 1, high: 1, medium: 1, low: 1}
offers_per_tier: 2
lateral: true
rules:
  - name: default
    tier: township
"""
CATEGORY = "elderly_care"
WORKERS = 20
CASES = 90
ID_NUMBER = "36040219500101002"
ID_NUMBER += id_number_check_char(ID_NUMBER)
PHONE = "13912345678"
NAME = "欧阳秀英"


def build_network(receiver_url: str) -> tuple[NetworkBuilder, list[str]]:
    net = NetworkBuilder()
    net.station("M-NR", "city")
    net.system_user(SYSTEM_USER)
    tree = net.subtree("NR", city="M-NR", townships=1, rooms_per_township=4)
    for n in range(WORKERS):
        worker = net.worker(f"nr-w{n:02d}", tree.townships[0], [CATEGORY], capacity=50)
        net.users[worker]["notify"] = [{"channel": "webhook", "url": f"{receiver_url}/{worker}", "secret": "s"}]
    return net, tree.rooms[tree.townships[0]]


@pytest_asyncio.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    await hooks.start()
    yield hooks
    await hooks.stop()


@pytest_asyncio.fixture(scope="module")
async def bench(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> AsyncIterator[RouterHarness]:
    network, _ = build_network(receiver.url)
    async with running_harness(tmp_path_factory.mktemp("notifier-restart"), policy_yaml=POLICY, network=network) as h:
        await h.start_notifier("notifier-1", CASELINK_NOTIFY_DIGEST_MINUTES="0")
        yield h


async def submit_with_pii(harness: RouterHarness, rooms: list[str], count: int) -> list[str]:
    messages = []
    for n in range(count):
        message = harness.referral(rooms[n % len(rooms)], CATEGORY, "medium")
        message["resident"] |= {"name": NAME, "id_number": ID_NUMBER, "phone": PHONE}
        message["summary"] = f"{NAME} 独居，电话 {PHONE}"
        messages.append(message)
    sent = [
        await harness.producer.send("caselink.referrals.submitted", json.dumps(m).encode(), key=m["room_id"].encode())
        for m in messages
    ]
    await asyncio.gather(*sent)
    return [str(m["submission_id"]) for m in messages]


async def wait_for_pushes(receiver: Receiver, count: int, within: float) -> None:
    for _ in range(int(within * 10)):
        if len({r.headers["x-caselink-delivery"] for r in receiver.requests}) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {len(receiver.requests)} of {count} pushes arrived")


async def test_stopping_the_notifier_mid_stream_neither_loses_nor_repeats_a_push(
    bench: RouterHarness, receiver: Receiver
) -> None:
    """SIGTERM mid-stream. (A SIGKILL mid-batch, where a push sent but not yet recorded goes out
    again with the same delivery id, is tests/reliability/test_crash.py.)"""
    _, rooms = build_network(receiver.url)
    rng = random.Random(20261122)
    waves = [await submit_with_pii(bench, rooms, CASES // 2)]

    # A graceful stop while tasks stream in: sends in flight finish and are recorded first.
    await wait_for_pushes(receiver, rng.randint(10, 30), within=90)
    await bench.stop_router("notifier-1")
    waves.append(await submit_with_pii(bench, rooms, CASES - CASES // 2))  # they wait on the topic
    await bench.start_notifier("notifier-1", CASELINK_NOTIFY_DIGEST_MINUTES="0")
    cases = await bench.cases_of([s for wave in waves for s in wave], within=120)
    await wait_for_pushes(receiver, len(cases), within=120)

    def notified() -> Counter[str]:
        return Counter(case for case in cases.values() for _ in bench.events.named(case, "notified"))

    await bench.events.wait_for(lambda: len(notified()) == len(cases), within=60, what="a notified event per case")

    pushes = Counter(r.headers["x-caselink-delivery"] for r in receiver.requests)
    assert len(pushes) == len(cases) and set(pushes.values()) == {1}
    jobs = await bench.sql("SELECT id, status FROM notifier.jobs")
    assert {r["status"] for r in jobs} == {"delivered"} and len(jobs) == len(cases)
    delivered_ids = {str(r["delivery_id"]) for r in await bench.sql("SELECT delivery_id FROM notifier.deliveries")}
    assert set(pushes) == delivered_ids
    assert set(notified().values()) == {1}

    # Nothing that identifies the resident left the system in a push, or reached a log line.
    for request in receiver.requests:
        body = request.body.decode()
        assert not any(secret in body for secret in (ID_NUMBER, PHONE, NAME)), body
    for service in bench.services.values():
        log = service.log_path.read_text(encoding="utf-8", errors="replace")
        for secret in (ID_NUMBER, PHONE, NAME):
            assert secret not in log, f"{secret} in {service.log_path}"


async def test_dead_letters_carry_the_original_messages_read_back_from_the_broker(bench: RouterHarness) -> None:
    """Read back all at once (the give-ups of one recording round), from two partitions, with
    neighbours that were not asked for in between; an offset past the end is left out."""
    topic = "caselink.case.events"
    sent = {}
    for n in range(600):  # more than one fetch's worth on partition 3
        partition = 3 if n % 3 else 5
        key, value = f"case-{n}".encode(), f'{{"n": {n}}}'.encode()
        sent[(partition, key, value)] = await bench.producer.send(topic, value, key=key, partition=partition)
    placed = {spec: await future for spec, future in sent.items()}
    wanted = {
        f"{topic}/{p}/{meta.offset}": (key, value) for (p, key, value), meta in placed.items() if int(key[5:]) % 4 == 0
    }
    past_end = f"{topic}/3/{max(m.offset for (p, _, _), m in placed.items() if p == 3) + 1000}"
    read = kafka_origin_reader(Settings(kafka_bootstrap=bench.kafka_bootstrap), bench.kafka_bootstrap)
    assert await read([*wanted, past_end]) == wanted
