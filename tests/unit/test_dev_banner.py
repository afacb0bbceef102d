"""What `caselink dev` prints once everything is up."""

from pathlib import Path

from services.dev import _banner

HTTP = "http://127.0.0.1:8000"


def test_the_demo_banner_names_the_demo_inbox_and_a_curl_to_try() -> None:
    text = _banner(HTTP, {"worker": "clk_w", "supervisor": "clk_s"}, Path("d/endpoints.json"), 0.0, demo_inbox=True)

    assert f"demo pushes    {HTTP}/dev/inbox" in text
    assert "clk_w" in text and "clk_s" in text
    assert f"curl -s -X POST {HTTP}/v1/referrals" in text


def test_with_an_own_network_the_banner_does_not_point_at_the_disabled_demo_inbox() -> None:
    text = _banner(HTTP, {"supervisor": "clk_s"}, Path("d/endpoints.json"), 0.0, demo_inbox=False)

    assert "/dev/inbox" not in text
    assert "clk_s" in text
    assert "Ctrl-C stops everything." in text
