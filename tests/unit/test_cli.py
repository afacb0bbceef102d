"""The `caselink` command line (CONTRACT §2), run in-process: what it prints, and how it refuses.

Nothing here reaches a database or a broker: every command either needs none (`policy check`,
`--help`) or must fail before connecting (bad file, missing CASELINK_DATABASE_URL).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from services.cli import main

DEFAULT_POLICY = Path(str(resources.files("services.router").joinpath("policy.yaml")))
DEFAULT_RULES = ["protect-serious", "crisis", "serious", "routine-in-village", "default"]

VALID_NETWORK = """\
stations:
  - {id: "C-360402", name: "濂溪区社工总站", tier: county}
  - {id: "T-360402101", name: "十里街道社工站", tier: township, parent: "C-360402"}
  - {id: "V-360402101001", name: "十里社区社工室", tier: village, parent: "T-360402101"}
users:
  - {id: "w-0001", name: "李娟", station: "T-360402101", role: worker, specialties: [elderly_care], capacity: 12}
"""


pytestmark = pytest.mark.usefixtures("isolated_settings_and_logging")


def _exit_message(argv: list[str]) -> str:
    """Run a command that must fail; return the message it exits with."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    code = caught.value.code
    assert code not in (0, None), "the command should have failed"
    assert isinstance(code, str), f"expected an explanatory message, got exit code {code!r}"
    return code


def test_policy_check_prints_the_default_rules_in_evaluation_order(capsys: pytest.CaptureFixture[str]) -> None:
    main(["policy", "check", str(DEFAULT_POLICY)])

    out = capsys.readouterr().out
    headings = [f"{number}. {name}" for number, name in enumerate(DEFAULT_RULES, start=1)]
    positions = [out.index(heading) for heading in headings]
    assert positions == sorted(positions)
    assert "5 rules, first match wins" in out
    assert "supervisors at county" in out


def test_policy_check_prints_a_custom_policy_in_its_own_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    # Put crisis before protect-serious: still valid, and the output must follow the file.
    start, middle = text.index("  - name: protect-serious"), text.index("  - name: crisis")
    end = text.index("  - name: serious")
    reordered = text[:start] + text[middle:end] + text[start:middle] + text[end:]
    policy = tmp_path / "policy.yaml"
    policy.write_text(reordered, encoding="utf-8")

    main(["policy", "check", str(policy)])

    out = capsys.readouterr().out
    assert out.index("1. crisis") < out.index("2. protect-serious") < out.index("3. serious")


def test_policy_check_rejects_a_broken_policy_naming_rule_and_field(tmp_path: Path) -> None:
    broken = DEFAULT_POLICY.read_text(encoding="utf-8").replace(
        "  - name: serious\n    when: {risk: [high]}\n    tier: township",
        "  - name: serious\n    when: {risk: [high]}\n    tier: province",
    )
    assert "tier: province" in broken
    policy = tmp_path / "broken.yaml"
    policy.write_text(broken, encoding="utf-8")

    message = _exit_message(["policy", "check", str(policy)])

    assert str(policy) in message
    assert "rules[2] (serious).tier" in message
    assert "province" in message


def test_policy_check_names_a_policy_whose_last_rule_is_not_a_catch_all(tmp_path: Path) -> None:
    policy = tmp_path / "no-default.yaml"
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    policy.write_text(text[: text.index("  - name: default")], encoding="utf-8")

    message = _exit_message(["policy", "check", str(policy)])

    assert "rules[3] (routine-in-village).when" in message
    assert "must match every case" in message


def test_policy_check_of_a_missing_file_says_it_cannot_read_it(tmp_path: Path) -> None:
    message = _exit_message(["policy", "check", str(tmp_path / "nowhere.yaml")])

    assert "cannot read" in message


def test_network_load_without_a_database_url_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASELINK_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    network = tmp_path / "network.yaml"
    network.write_text(VALID_NETWORK, encoding="utf-8")

    message = _exit_message(["network", "load", str(network)])

    assert "CASELINK_DATABASE_URL" in message


def test_db_upgrade_without_a_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_KAFKA_BOOTSTRAP", "127.0.0.1:9")

    message = _exit_message(["db", "upgrade"])

    assert "CASELINK_DATABASE_URL" in message


def test_token_create_without_a_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_KAFKA_BOOTSTRAP", "127.0.0.1:9")

    message = _exit_message(["token", "create", "--user", "w-0001"])

    assert "CASELINK_DATABASE_URL" in message


def test_network_load_rejects_a_parent_at_the_wrong_tier_within_the_file_before_connecting(tmp_path: Path) -> None:
    # A room under the county, both in the file: wrong whatever the database holds, so no database is needed.
    # (A parent the file does not define is looked up in the database: tests/integration/test_network_load.py.)
    network = tmp_path / "network.yaml"
    network.write_text(VALID_NETWORK.replace('parent: "T-360402101"', 'parent: "C-360402"'), encoding="utf-8")

    message = _exit_message(["network", "load", str(network)])

    assert "network file rejected" in message
    assert str(network) in message
    assert "stations[2] (V-360402101001).parent" in message
    assert "must be a township station, 'C-360402' is a county hub" in message


def test_network_load_reports_every_problem_of_a_file_at_once(tmp_path: Path) -> None:
    network = tmp_path / "network.yaml"
    broken = VALID_NETWORK.replace('parent: "T-360402101"', 'parent: "C-360402"').replace("capacity: 12", "capacity: 0")
    network.write_text(broken, encoding="utf-8")

    message = _exit_message(["network", "load", str(network)])

    assert "stations[2] (V-360402101001).parent" in message
    assert "users[0] (w-0001).capacity: a worker needs capacity > 0" in message


def test_help_lists_every_command_of_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])

    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in ("dev", "intake", "router", "notifier", "db", "topics", "network", "token", "policy"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["db", "--help"], "upgrade"),
        (["topics", "--help"], "create"),
        (["network", "--help"], "load"),
        (["token", "create", "--help"], "--user"),
        (["policy", "--help"], "check"),
        (["router", "--help"], "--ready-file"),
    ],
)
def test_subcommand_help_shows_its_verbs_and_options(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)

    assert caught.value.code == 0
    assert expected in capsys.readouterr().out


def test_dev_accepts_the_options_of_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dev", "--help"])

    out = capsys.readouterr().out
    for option in ("--host", "--port", "--data-dir", "--network", "--policy"):
        assert option in out


def test_a_command_without_its_verb_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["db"])

    assert caught.value.code == 2
    assert "required" in capsys.readouterr().err


def test_dev_with_a_broken_policy_exits_with_its_problems_before_starting_anything(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT_POLICY.read_text(encoding="utf-8").replace("tier: county", "tier: galaxy", 1))

    message = _exit_message(["dev", "--data-dir", str(tmp_path / "dev"), "--policy", str(policy)])

    assert message.splitlines()[0] == f"{policy}: policy rejected:"
    assert "rules[0] (protect-serious).tier: unknown tier 'galaxy'" in message
    assert not (tmp_path / "dev").exists()  # no database, broker or service was started


def test_dev_with_a_broken_network_file_exits_with_its_problems_before_starting_anything(tmp_path: Path) -> None:
    network = tmp_path / "network.yaml"
    network.write_text(VALID_NETWORK.replace('parent: "C-360402"', 'parent: "C-999999"'), encoding="utf-8")

    message = _exit_message(["dev", "--data-dir", str(tmp_path / "dev"), "--network", str(network)])

    assert message.splitlines() == [
        "network file rejected:",
        f"{network}: stations[1] (T-360402101).parent: unknown station 'C-999999'",
    ]
    assert not (tmp_path / "dev").exists()


# Nothing listens on port 9 (discard) here: a connection is refused at once.
@pytest.mark.parametrize("argv", [["db", "upgrade"], ["token", "create", "--user", "w-0001"]], ids=["db", "token"])
def test_a_database_that_cannot_be_reached_is_one_line_naming_the_variable(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASELINK_DATABASE_URL", "postgresql+asyncpg://caselink:s3cret@127.0.0.1:9/caselink")

    message = _exit_message(argv)

    assert message.startswith("caselink: could not connect (CASELINK_DATABASE_URL, CASELINK_KAFKA_BOOTSTRAP)")
    assert "127.0.0.1', 9" in message  # the address it tried
    assert "s3cret" not in message and "\n" not in message


def test_a_broker_that_cannot_be_reached_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_KAFKA_BOOTSTRAP", "127.0.0.1:9")

    message = _exit_message(["topics", "create"])

    assert message.startswith("caselink: the broker (CASELINK_KAFKA_BOOTSTRAP) could not be reached")


def test_a_database_url_of_another_kind_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASELINK_DATABASE_URL", "mysql://caselink@127.0.0.1/caselink")

    message = _exit_message(["db", "upgrade"])

    assert "CASELINK_DATABASE_URL: Value error, must be postgresql+asyncpg://" in message
