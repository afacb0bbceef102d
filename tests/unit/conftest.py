"""Fixtures shared by the unit tests."""

from tests.support.isolation import isolated_settings_and_logging

__all__ = ["isolated_settings_and_logging"]
