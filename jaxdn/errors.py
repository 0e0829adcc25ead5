"""User-facing error types. The CLI turns any `JaxdnError` into a one-line message and exit code 2."""


class JaxdnError(Exception):
    """Base class for errors caused by the user's input or environment (not by a bug)."""


class InputError(JaxdnError, ValueError):
    """The input image or file cannot be used as given (shape, dtype, NaN/inf, size, format)."""


class OutputExistsError(JaxdnError, FileExistsError):
    """An output file already exists and `overwrite` was not requested, or it equals the input."""


class MethodNotAvailable(JaxdnError, NotImplementedError):
    """The requested method (or its weights) is not available in this installation."""


class MissingExtraError(JaxdnError, ImportError):
    """An optional dependency is missing; the message names the pip extra that provides it."""
