"""The exception types a user sees: each message is a single line that says what to do."""


class HybridInferError(Exception):
    """A problem with the user's input (file, flag, prompt) rather than a bug in hybridinfer."""


class ArgumentTypeError(HybridInferError, TypeError):
    """A Python API argument of the wrong type; the message names the argument and the type it takes. A
    TypeError too, as Python's own argument errors are."""
