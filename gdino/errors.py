"""The one exception type the CLI turns into a clean error message instead of a traceback."""


class GDinoError(ValueError):
    """Bad configuration or input; the message names the file, record or option at fault."""
