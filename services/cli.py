"""The `caselink` command line (CONTRACT §2)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.shared.logging import configure_logging
from services.shared.settings import Settings, get_settings

if TYPE_CHECKING:
    from services.router.policy import Policy
    from services.shared.network import NetworkFile


def policy_or_exit(path: str | Path) -> Policy:
    """The routing policy in `path`, or exit with its problems, one per line."""
    from services.router.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise SystemExit(f"{path}: policy rejected:\n{exc}") from None


def network_file_or_exit(path: str | os.PathLike[str], *, defer_outside_stations: bool = False) -> NetworkFile:
    """The network file in `path` (see `parse_network`), or exit with its problems, one per line."""
    from services.shared.network import NetworkFileError, load_network_file

    try:
        return load_network_file(path, defer_outside_stations=defer_outside_stations)
    except NetworkFileError as exc:
        raise SystemExit(f"network file rejected:\n{exc}") from None


def _run_intake(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from services.intake.app import create_app

    options: dict[str, Any] = {"host": settings.http_host, "port": settings.http_port, "log_config": None}
    if settings.http_workers == 1:
        uvicorn.Server(uvicorn.Config(create_app(settings), access_log=False, **options)).run()
    else:  # each worker process builds its own app (and logging) from the environment
        uvicorn.run(
            "services.intake.app:create_app_from_environment",
            factory=True,
            workers=settings.http_workers,
            access_log=False,
            **options,
        )


def _run_consumer_service(factory: Callable[[Settings], Any]) -> Callable[[Settings, argparse.Namespace], None]:
    def run(settings: Settings, args: argparse.Namespace) -> None:
        import uvloop

        from services.shared.runtime import serve_until_signalled

        uvloop.run(serve_until_signalled(lambda: factory(settings), ready_file=args.ready_file))

    return run


def _router(settings: Settings) -> Any:
    from services.router.app import create_service

    return create_service(settings)


def _notifier(settings: Settings) -> Any:
    from services.notifier.app import create_service

    return create_service(settings)


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> None:
    from services.shared.migrate import upgrade

    upgrade(settings.require_database())
    print("database is at the latest migration")


def _topics_create(settings: Settings, args: argparse.Namespace) -> None:
    from services.shared.kafka import create_topics

    created = asyncio.run(create_topics(settings, settings.require_kafka()))
    print(f"created {len(created)} topics" + (": " + ", ".join(created) if created else " (all existed)"))


def _tail(settings: Settings, args: argparse.Namespace) -> None:
    from aiokafka.errors import KafkaConnectionError

    from services.tail import EventFilter, run_tail, unknown_type_warning

    warning = unknown_type_warning(args.type or [])
    if warning:
        print(warning, file=sys.stderr)
    only = EventFilter.build(args.type, args.case)
    try:
        asyncio.run(run_tail(settings, from_beginning=args.from_beginning, event_filter=only, as_json=args.json))
    except KafkaConnectionError as exc:
        raise SystemExit(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None


def _with_session(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    from services.shared.db import create_engine, session_factory, transaction

    async def run() -> Any:
        engine = create_engine(settings)
        try:
            async with transaction(session_factory(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _network_load(settings: Settings, args: argparse.Namespace) -> None:
    from services.shared.directory import load_network
    from services.shared.network import NetworkFileError

    # The file may name stations already in the database without defining them: load_network checks those.
    network = network_file_or_exit(args.file, defer_outside_stations=True)
    try:
        n_stations, n_users = _with_session(settings, lambda session: load_network(session, network))
    except NetworkFileError as exc:
        lines = "\n".join(f"{args.file}: {line}" for line in exc.errors)
        raise SystemExit(f"network file rejected:\n{lines}") from None
    print(f"loaded {n_stations} stations and {n_users} users from {args.file}")


def _token_create(settings: Settings, args: argparse.Namespace) -> None:
    from services.shared.directory import create_token

    try:
        print(_with_session(settings, lambda session: create_token(session, user_id=args.user)))
    except LookupError as exc:
        raise SystemExit(str(exc)) from None


def _token_revoke(settings: Settings, args: argparse.Namespace) -> None:
    from services.shared.directory import revoke_tokens

    revoked = _with_session(settings, lambda session: revoke_tokens(session, user_id=args.user))
    print(f"revoked {revoked} token(s) of {args.user}")


def _policy_check(settings: Settings, args: argparse.Namespace) -> None:
    from services.router.policy import describe_policy

    print(describe_policy(policy_or_exit(args.file)))


def _policy_simulate(settings: Settings, args: argparse.Namespace) -> None:
    import json

    from services.router.policy import default_policy
    from services.router.simulation import format_report, network_from_file, sample_cases, simulate
    from services.shared.time import utc_now

    def chosen_policy(path: Path | None) -> Policy:
        # No --against: the policy the router runs (CASELINK_POLICY, else the packaged one).
        chosen = path or settings.policy
        return policy_or_exit(chosen) if chosen is not None else default_policy()

    if args.cases < 1:
        raise SystemExit(f"--cases must be at least 1, got {args.cases}")
    draft, current = chosen_policy(args.draft), chosen_policy(args.against)
    network = None
    if args.network is not None:
        network = network_from_file(network_file_or_exit(args.network))
    recorded = None
    if network is None or args.recorded:
        network, recorded = _with_session(settings, lambda session: _read_for_simulation(session, network, args))
        if recorded == []:
            raise SystemExit("there are no recorded cases in router.cases to simulate")
    cases = recorded if recorded is not None else sample_cases(network, count=args.cases, seed=args.seed)
    report = simulate(network=network, cases=cases, current=current, draft=draft, now=utc_now())
    sample = f"{len(cases)} " + ("most recent recorded cases" if args.recorded else f"random cases, seed {args.seed}")
    header = {
        "draft_policy": str(args.draft),
        "current_policy": str(args.against or settings.policy or "packaged default"),
        "sample": sample,
    }
    if args.json:
        print(json.dumps({**header, **report.to_dict()}, indent=2))
    else:
        print(f"draft {header['draft_policy']} against current {header['current_policy']}; {sample}")
        print(format_report(report))


async def _read_for_simulation(session: Any, network: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """Read-only: the network with its current loads (unless given), and the most recent cases if asked."""
    from dataclasses import replace

    from sqlalchemy import select, text

    from services.router import tables
    from services.router.domain import CaseFacts, Network
    from services.router.handlers import load_network

    await session.execute(text("SET TRANSACTION READ ONLY"))
    if not args.recorded:
        return network or await load_network(session), None
    if network is None:
        # The recorded cases are replayed from the start, so today's load (which they partly
        # make up) would count them twice: they replay onto the same workers, all idle.
        live = await load_network(session)
        network = Network(live.stations, [replace(worker, load=0) for worker in live.workers])
    cases = tables.cases.c
    rows = await session.execute(
        select(cases.case_id, cases.room_id, cases.category, cases.risk_level, cases.resident_ref)
        .order_by(cases.created_at.desc(), cases.case_id.desc())
        .limit(args.cases)
    )
    # Oldest first, so the simulated load builds up in the order the cases arrived.
    recorded = [CaseFacts(r.case_id, r.room_id, r.category, r.risk_level, r.resident_ref) for r in rows]
    return network, recorded[::-1]


def _dev(settings: Settings, args: argparse.Namespace) -> None:
    from services.dev import run_dev

    sys.exit(run_dev(settings, args))


def _dlq_replay(settings: Settings, args: argparse.Namespace) -> None:
    from aiokafka.errors import KafkaError

    from services.dlq import replay_dead_letters

    for name, value in (("--since-offset", args.since_offset), ("--limit", args.limit)):
        if value is not None and value < 0:
            raise SystemExit(f"{name} must not be negative, got {value}")
    try:
        asyncio.run(
            replay_dead_letters(
                settings, args.topic, since_offset=args.since_offset, limit=args.limit, dry_run=args.dry_run
            )
        )
    except KafkaError as exc:
        hint = ""
        if settings.kafka_enable_idempotence and type(exc).__name__ == "UnknownError":
            # Tansu (the embedded broker) refuses idempotent producers with an error aiokafka cannot name.
            hint = "; against a broker without idempotent producers (Tansu) set CASELINK_KAFKA_ENABLE_IDEMPOTENCE=false"
        raise SystemExit(f"cannot replay from Kafka at {settings.kafka_bootstrap}: {exc!r}{hint}") from None


def _bench(settings: Settings, args: argparse.Namespace) -> None:
    from services.bench.cli import run_bench

    sys.exit(run_bench(settings, args))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every caselink command."""
    parser = argparse.ArgumentParser(prog="caselink", description="tiered case referral and dispatch")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="the whole system on embedded infrastructure")
    dev.add_argument("--host", help="HTTP address (default: CASELINK_HTTP_HOST, 127.0.0.1)")
    dev.add_argument("--port", type=int, help="HTTP port (default: CASELINK_HTTP_PORT, 8080)")
    dev.add_argument("--data-dir", type=Path, default=Path(".caselink"))
    dev.add_argument("--network", type=Path, help="network file (default: the demo county)")
    dev.add_argument("--policy", type=Path, help="routing policy (default: the packaged policy.yaml)")
    dev.set_defaults(handler=_dev, service="dev")

    intake = commands.add_parser("intake", help="run the intake service (HTTP API; readiness at /readyz)")
    intake.set_defaults(handler=_run_intake, service="intake")
    for name, handler in (("router", _run_consumer_service(_router)), ("notifier", _run_consumer_service(_notifier))):
        service = commands.add_parser(name, help=f"run the {name} service against the configured infrastructure")
        service.add_argument("--ready-file", type=Path, help="touch this file once the service consumes")
        service.set_defaults(handler=handler, service=name)

    db = commands.add_parser("db", help="database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(handler=_db_upgrade, service="cli")
    topics = commands.add_parser("topics", help="Kafka topics").add_subparsers(dest="topics_command", required=True)
    topics.add_parser("create", help="create the topics").set_defaults(handler=_topics_create, service="cli")
    tail = commands.add_parser("tail", help="watch the case events on caselink.case.events until Ctrl-C")
    tail.add_argument("--from-beginning", action="store_true", help="from the oldest kept event (default: new ones)")
    tail.add_argument("--type", action="append", metavar="T", help="only this type, e.g. assigned (repeatable)")
    tail.add_argument("--case", metavar="ID", help="only the events of this case")
    tail.add_argument("--json", action="store_true", help="print each event's raw JSON, one per line")
    tail.set_defaults(handler=_tail, service="cli")

    network = commands.add_parser("network", help="station network").add_subparsers(dest="net_command", required=True)
    load = network.add_parser("load", help="create or update stations and users from a network file")
    load.add_argument("file", type=Path)
    load.set_defaults(handler=_network_load, service="cli")

    token = commands.add_parser("token", help="bearer tokens").add_subparsers(dest="token_command", required=True)
    create = token.add_parser("create", help="print a new bearer token for a user")
    create.add_argument("--user", required=True)
    create.set_defaults(handler=_token_create, service="cli")
    revoke = token.add_parser("revoke", help="revoke every live token of a user")
    revoke.add_argument("--user", required=True)
    revoke.set_defaults(handler=_token_revoke, service="cli")

    policy = commands.add_parser("policy", help="routing policy").add_subparsers(dest="policy_command", required=True)
    check = policy.add_parser("check", help="validate a policy and print its rules in evaluation order")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_policy_check, service="cli")
    simulate = policy.add_parser(
        "simulate", help="dry run: route a sample through a draft policy and compare it with the current one"
    )
    simulate.add_argument("draft", type=Path, help="the draft policy")
    simulate.add_argument("--against", type=Path, help="the current policy (default: CASELINK_POLICY or packaged)")
    simulate.add_argument("--network", type=Path, help="network file (default: the database, with current loads)")
    simulate.add_argument("--cases", type=int, default=1000, help="how many cases (default: 1000)")
    simulate.add_argument("--recorded", action="store_true", help="the most recent recorded cases (needs the database)")
    simulate.add_argument("--seed", type=int, default=1, help="seed of the random sample (default: 1)")
    simulate.add_argument("--json", action="store_true", help="print the report as JSON")
    simulate.set_defaults(handler=_policy_simulate, service="cli")

    dlq = commands.add_parser("dlq", help="dead-letter topics").add_subparsers(dest="dlq_command", required=True)
    replay = dlq.add_parser(
        "replay", help="re-publish dead letters to their origin topic (only new ones since the last run)"
    )
    replay.add_argument("topic", help="the consumed topic or its .dlq, e.g. caselink.referrals.submitted")
    replay.add_argument("--since-offset", type=int, help="start at this offset (default: after the last run)")
    replay.add_argument("--limit", type=int, help="replay at most this many messages")
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; publish nothing")
    replay.set_defaults(handler=_dlq_replay, service="cli")

    from services.bench.cli import add_arguments as add_bench_arguments

    bench = commands.add_parser("bench", help="end-to-end benchmark: raw broker baseline, pipeline, HTTP intake")
    add_bench_arguments(bench)
    bench.set_defaults(handler=_bench, service="bench")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `caselink` console script."""
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as invalid:
        raise SystemExit(settings_rejected(invalid)) from None
    if args.service == "dev" and "CASELINK_LOG_FORMAT" not in os.environ:
        # A person watches `caselink dev` in a terminal; production services keep JSON.
        settings = settings.model_copy(update={"log_format": "console"})
    configure_logging(settings, service=args.service)
    if args.service != "cli":
        args.handler(settings, args)  # the services retry what they cannot reach, and log it
        return
    try:
        args.handler(settings, args)
    except Exception as exc:
        if (why := unreachable(exc)) is None:
            raise
        raise SystemExit(f"caselink: {why}") from None


def settings_rejected(invalid: Any) -> str:
    """The settings' problems, one line each, named by their environment variables."""
    lines = [f"CASELINK_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in invalid.errors()]
    return "caselink: the settings are not valid:\n  " + "\n  ".join(lines)


def unreachable(exc: BaseException) -> str | None:
    """What an operator command could not reach, in one line; None for any other error (a bug)."""
    from aiokafka.errors import KafkaError
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, KafkaError):
        return f"the broker (CASELINK_KAFKA_BOOTSTRAP) could not be reached or refused: {exc}"
    if isinstance(exc, DBAPIError):
        return f"the database (CASELINK_DATABASE_URL) could not be reached or refused: {exc.orig}"
    if isinstance(exc, OSError):  # refused or timed out before either library wrapped it (it names the address)
        return f"could not connect (CASELINK_DATABASE_URL, CASELINK_KAFKA_BOOTSTRAP): {exc}"
    return None


if __name__ == "__main__":
    main()
