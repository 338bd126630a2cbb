"""The one error type of data preparation that a user sees without a traceback."""


class WikiError(Exception):
    """A user-facing problem with the input or the options; printed without a traceback."""
