"""The one exception type the `sam` commands turn into a clean error message instead of a traceback."""


class SamError(ValueError):
    """Bad configuration or input; the message names the file, record or option at fault."""
