"""The bench's results: the headline figures and the human table (pure), and their rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.bench.stats import MIN_STEADY_SECONDS, check_targets, ratio

Row = tuple[str, str, str]


def sustained(section: dict[str, Any] | None, key: str = "per_s") -> float | None:
    """A phase's sustained rate: all its items ÷ (first start → last finish).

    Not the rate of its middle (`steady_*`, the 10th to the 90th percentile of finishes): the
    stages share the cores, so the first ones run ahead while the last wait, and the middle then
    measures how fast the last stages drain what was left to them. A baseline's middle once read
    31,215 msg/s on cores that carried at most 14,500 msg/s at its cost per message."""
    if not section:
        return None
    return section.get(key)


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Add the ratios and the target checks to a results dict (returns the same dict)."""
    baseline = sustained(results.get("baseline"))
    floor = sustained(results.get("floor"))
    saturation = results["caselink"].get("saturation") or []
    by_replicas = {str(p["replicas"]): sustained(p, "cases_per_s") for p in saturation}
    results["ratios"] = {
        "caselink_vs_baseline": {n: ratio(rate, baseline) for n, rate in by_replicas.items()},
        "caselink_vs_floor": {n: ratio(rate, floor) for n, rate in by_replicas.items()},
        "scale_out": {n: ratio(rate, by_replicas.get("1")) for n, rate in by_replicas.items() if n != "1"},
    }
    fixed = results["caselink"].get("fixed_rate") or {}
    http = results.get("http") or {}
    best = max((r for r in by_replicas.values() if r is not None), default=None)
    results["targets"] = [
        t.to_dict()
        for t in check_targets(
            cases_per_s=best,
            p99_ms_at_rate=(fixed.get("latency_ms") or {}).get("p99_ms"),
            offered_rate=fixed.get("offered_per_s"),
            http_per_s=http.get("requests_per_s"),
        )
    ]
    return results


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.1f}{unit}" if value < 100 else f"{value:,.0f}{unit}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _latency(section: dict[str, Any]) -> str:
    lat = section.get("latency_ms") or {}
    return f"p50 {_num(lat.get('p50_ms'))} · p95 {_num(lat.get('p95_ms'))} · p99 {_num(lat.get('p99_ms'))} ms"


def table_rows(results: dict[str, Any]) -> list[Row]:
    """(what, figure, detail) rows of the human table, from a summarised results dict."""
    rows: list[Row] = []
    if baseline := results.get("baseline"):
        rows += _chain_rows("baseline", f"raw aiokafka, {baseline['hops']} hops", baseline)
    if floor := results.get("floor"):
        rows += _chain_rows("floor", f"inbox + outbox in PostgreSQL, {floor['forwarders']} forwarders", floor)
    if fixed := results["caselink"].get("fixed_rate"):
        rows.append(
            (
                f"caselink at {_num(fixed['offered_per_s'])}/s offered (×{fixed['replicas']})",
                _latency(fixed),
                f"{fixed['cases']:,} cases; settled {_num(fixed.get('cases_per_s'))} cases/s",
            )
        )
    for phase in results["caselink"].get("saturation") or []:
        rows.append(
            (
                f"caselink saturation, ×{phase['replicas']} router+notifier",
                f"{_num(sustained(phase, 'cases_per_s'))} cases/s",
                f"{phase['cases']:,} cases; {_middle(phase, 'cases_per_s', 'cases')}; {_latency(phase)}",
            )
        )
        if cpu := phase.get("cpu"):
            rows.append(_cpu_row(f"×{phase['replicas']}", cpu))
    if http := results.get("http"):
        rows.append(
            (
                f"HTTP intake, {http['clients']} clients",
                f"{_num(http.get('requests_per_s'))} req/s",
                f"{http['requests']:,} requests in {http['seconds']:.1f}s; {_latency(http)}; "
                f"statuses {http['statuses']}{_drained(http)}",
            )
        )
        if cpu := http.get("cpu"):
            rows.append(_cpu_row("HTTP", cpu, unit="request"))
    for replicas, value in (results.get("ratios") or {}).get("caselink_vs_baseline", {}).items():
        rows.append((f"ratio caselink (×{replicas}) / baseline", _ratio(value), "sustained cases/s ÷ sustained msg/s"))
    for replicas, value in (results.get("ratios") or {}).get("caselink_vs_floor", {}).items():
        rows.append((f"ratio caselink (×{replicas}) / floor", _ratio(value), "sustained cases/s ÷ sustained msg/s"))
    for replicas, value in (results.get("ratios") or {}).get("scale_out", {}).items():
        rows.append((f"scale-out ×{replicas} / ×1", _ratio(value), "sustained cases/s"))
    for target in results.get("targets") or []:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        rows.append(
            (
                f"target: {target['name']}",
                f"{_num(target['measured'])} {target['unit']}",
                f"{target['target']}: {verdict}",
            )
        )
    if correctness := results.get("correctness"):
        verdict = "ok" if correctness["ok"] else "FAILED"
        detail = (
            f"{correctness['submitted']:,} submitted, {correctness['settled']:,} settled "
            f"({correctness['assigned']:,} assigned, {correctness['queued']:,} queued), {correctness['lost']:,} lost, "
            f"{correctness['duplicate_decisions']:,} duplicate decisions, {correctness['sequence_problems']:,} "
            f"sequence problems, {correctness['rejected']:,} rejected, "
            f"{correctness['notification_failed']:,} notification failures"
        )
        rows.append(("correctness", verdict, detail))
    return rows


def _chain_rows(name: str, what: str, chain: dict[str, Any]) -> list[Row]:
    """The rows of the raw baseline or the durable floor: its rate, and what a message cost."""
    rows = [
        (
            f"{name}: {what}",
            f"{_num(sustained(chain))} msg/s",
            f"{chain['messages']:,} msgs; {_middle(chain, 'per_s', 'msg')}; {_latency(chain)}",
        )
    ]
    if cpu := chain.get("cpu"):
        rows.append(_cpu_row(name, cpu, unit="msg"))
    return rows


def print_table(results: dict[str, Any]) -> None:
    """The human table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="caselink bench", title_justify="left")
    for column in ("measurement", "result", "detail"):
        table.add_column(column, overflow="fold")
    for row in table_rows(results):
        style = "bold red" if row[0] == "correctness" and row[1] != "ok" else None
        table.add_row(*row, style=style)
    Console(width=160).print(table)


def write_json(results: dict[str, Any], path: Path) -> None:
    """The results as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _middle(section: dict[str, Any], key: str, unit: str) -> str:
    """The rate of the phase's middle, which overstates a steady stream (see `sustained`)."""
    middle = section.get("steady_" + key)
    if middle is None:
        return f"no middle rate (it needs 10 items and {MIN_STEADY_SECONDS:g} s between the 10th and 90th percentile)"
    return f"middle (10th–90th percentile) {_num(middle)} {unit}/s"


def _drained(http: dict[str, Any]) -> str:
    """How long the HTTP phase waited for the saturation phases' backlog (absent in older results)."""
    if "backlog_drained_after_s" not in http:
        return ""
    seconds = http["backlog_drained_after_s"]
    return "; started with the backlog still there" if seconds is None else f"; after the backlog drained ({seconds} s)"


def _cpu_row(label: str, cpu: dict[str, Any], unit: str = "case") -> Row:
    """What a case (or a baseline's message) cost in CPU, by part, and the rate the machine's cores
    would allow at that cost."""
    parts = " · ".join(f"{part} {ms:.2f}" for part, ms in sorted(cpu["ms_per_case"].items(), key=lambda kv: -kv[1]))
    return (
        f"  CPU per {unit}, {label}",
        f"{cpu['total_ms_per_case']:.2f} ms",
        f"{parts} ms; {cpu['cores_busy']} of {cpu['cores']} cores busy; "
        f"at this cost {cpu['cores']} cores carry at most {_num(cpu['ceiling_cases_per_s'])} {unit}s/s",
    )
