"""Errors that name the bad key or value and the allowed choices."""


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""
