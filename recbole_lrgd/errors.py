"""One exception type for bad user input, so the CLI can print it as a single line."""


class LRGDError(Exception):
    """A user-facing error: bad config, missing data, a model that will not load."""
