"""Errors shared by every experiment: one class, so a launcher catches one thing."""


class ConfigError(ValueError):
    """A config field has a bad value; the message names it and says what to use."""
