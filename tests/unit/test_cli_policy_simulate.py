"""`caselink policy simulate`, run in-process on a network file: what it prints, and how it refuses.

Nothing here reaches a database: the network comes from a file and the cases are a random sample.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from services.cli import main

DEFAULT_POLICY = Path(str(resources.files("services.router").joinpath("policy.yaml")))

NETWORK = """\
stations:
  - {id: "C-360402", name: "濂溪区社工总站", tier: county}
  - {id: "T-360402101", name: "十里街道社工站", tier: township, parent: "C-360402"}
  - {id: "V-360402101001", name: "十里社区社工室", tier: village, parent: "T-360402101"}
  - {id: "V-360402101002", name: "湖滨社区社工室", tier: village, parent: "T-360402101"}
users:
  - id: "w-0001"
    name: "李娟"
    station: "V-360402101001"
    role: worker
    specialties: [social_assistance, elderly_care, child_protection, disability_support, mental_health,
                  crisis_intervention, medical_social_work, family_support, livelihood, community_governance,
                  resource_linkage]
    capacity: 500
  - id: "w-0002"
    name: "王芳"
    station: "T-360402101"
    role: worker
    specialties: [social_assistance, elderly_care, child_protection, disability_support, mental_health,
                  crisis_intervention, medical_social_work, family_support, livelihood, community_governance,
                  resource_linkage]
    certification: senior
    capacity: 500
  - {id: "s-0001", name: "张伟", station: "T-360402101", role: supervisor}
"""
ROUTINE_IN_VILLAGE = "  - name: routine-in-village\n    when: {risk: [low]}\n    tier: village"


pytestmark = pytest.mark.usefixtures("isolated_settings_and_logging")


@pytest.fixture
def network_file(tmp_path: Path) -> Path:
    path = tmp_path / "network.yaml"
    path.write_text(NETWORK, encoding="utf-8")
    return path


def _draft(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "draft.yaml"
    path.write_text(text.replace(old, new).replace("version: 1", "version: 2"), encoding="utf-8")
    return path


def _numbers(out: str, label: str) -> list[str]:
    """The current, draft and change columns of a report row."""
    line = next(line for line in out.splitlines() if line.strip().startswith(label))
    return line.split()[-3:]


def test_simulate_prints_the_tier_counts_of_both_policies(
    tmp_path: Path, network_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = _draft(tmp_path, ROUTINE_IN_VILLAGE, ROUTINE_IN_VILLAGE.replace("tier: village", "tier: township"))

    main(["policy", "simulate", str(draft), "--network", str(network_file), "--cases", "200"])

    out = capsys.readouterr().out
    assert "200 random cases, seed 1" in out
    assert "current (v1)" in out
    assert "draft (v2)" in out
    current_village, draft_village, change = _numbers(out, "village ")
    assert int(current_village) > 0
    assert draft_village == "0"
    assert change == f"-{current_village}"
    current_township, draft_township, _ = _numbers(out, "township ")
    assert int(draft_township) == int(current_township) + int(current_village)
    assert "no events emitted" in out


def test_simulate_against_a_given_policy_prints_json(
    tmp_path: Path, network_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = _draft(tmp_path, "lateral: true", "lateral: false")

    argv = ["policy", "simulate", str(draft), "--against", str(DEFAULT_POLICY), "--network", str(network_file)]

    main(argv)
    text = capsys.readouterr().out
    main([*argv, "--json"])
    data = json.loads(capsys.readouterr().out)

    assert data["current_policy"] == str(DEFAULT_POLICY)
    assert data["draft_policy"] == str(draft)
    assert data["cases"] == 1000
    assert sum(data["current"]["by_tier"].values()) == sum(data["draft"]["by_tier"].values()) == 1000
    assert data["current"]["assigned"] + data["current"]["queued"] == 1000
    assert _numbers(text, "township ")[:2] == [
        str(data["current"]["by_tier"]["township"]),
        str(data["draft"]["by_tier"]["township"]),
    ]


def test_simulate_is_deterministic_for_a_seed(
    tmp_path: Path, network_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = _draft(tmp_path, "offers_per_tier: 2", "offers_per_tier: 3")
    argv = ["policy", "simulate", str(draft), "--network", str(network_file), "--cases", "50", "--json"]

    main([*argv, "--seed", "5"])
    first = capsys.readouterr().out
    main([*argv, "--seed", "5"])

    assert capsys.readouterr().out == first


def test_simulate_rejects_a_broken_draft_naming_rule_and_field(tmp_path: Path, network_file: Path) -> None:
    serious = "  - name: serious\n    when: {risk: [high]}\n    tier: township"
    draft = _draft(tmp_path, serious, serious.replace("tier: township", "tier: province"))

    with pytest.raises(SystemExit) as caught:
        main(["policy", "simulate", str(draft), "--network", str(network_file)])

    message = str(caught.value.code)
    assert f"{draft}: policy rejected" in message
    assert "rules[2] (serious).tier" in message
    assert "province" in message


def test_simulate_without_a_network_file_or_database_names_the_variable(tmp_path: Path) -> None:
    draft = _draft(tmp_path, "lateral: true", "lateral: false")

    with pytest.raises(SystemExit) as caught:
        main(["policy", "simulate", str(draft)])

    assert "CASELINK_DATABASE_URL" in str(caught.value.code)


def test_simulate_rejects_a_broken_network_file_naming_the_problem(tmp_path: Path) -> None:
    draft = _draft(tmp_path, "lateral: true", "lateral: false")
    network = tmp_path / "network.yaml"
    network.write_text(NETWORK.replace('parent: "C-360402"', 'parent: "C-999999"'), encoding="utf-8")

    with pytest.raises(SystemExit) as caught:
        main(["policy", "simulate", str(draft), "--network", str(network)])

    assert "network file rejected" in str(caught.value.code)
    assert "unknown station 'C-999999'" in str(caught.value.code)


def test_policy_help_lists_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["policy", "simulate", "--help"])

    assert caught.value.code == 0
    out = capsys.readouterr().out
    for option in ("--against", "--network", "--cases", "--recorded", "--seed", "--json"):
        assert option in out
