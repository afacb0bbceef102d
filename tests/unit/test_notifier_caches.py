"""The notifier words and configures the same thing from its caches as without them."""

import random
from datetime import UTC, datetime

from services.notifier.domain import ChannelConfig
from services.notifier.handlers import channel_configs
from services.notifier.messages import BEIJING, deadline_text


def test_a_recipients_channels_are_the_same_configs_every_time() -> None:
    notify = [{"channel": "webhook", "url": "http://hooks/w-1", "secret": "s"}, {"channel": "sms", "phone": "+86 1"}]
    expected = (ChannelConfig("webhook", url="http://hooks/w-1", secret="s"), ChannelConfig("sms", phone="+86 1"))
    assert channel_configs(notify) == expected
    assert channel_configs([dict(c) for c in notify]) == expected
    assert channel_configs(None) == channel_configs([]) == ()


def test_channels_with_a_value_that_cannot_be_cached_are_still_configured() -> None:
    odd: list[dict[str, object]] = [{"channel": "webhook", "url": "http://hooks/w-1", "extra": ["not", "hashable"]}]
    assert channel_configs(odd) == (ChannelConfig("webhook", url="http://hooks/w-1"),)


def test_deadline_text_is_the_beijing_wall_clock_strftime_would_give() -> None:
    rng = random.Random(7)
    for _ in range(500):
        moment = datetime.fromtimestamp(rng.uniform(0, 4e9), UTC)
        local = moment.astimezone(BEIJING)
        expected = (f"{local.month}月{local.day}日 {local:%H:%M}", f"{local:%Y-%m-%d %H:%M} (Beijing time)")
        assert deadline_text(moment.isoformat()) == expected
        assert deadline_text(moment.isoformat()) == expected  # cached: the same again
