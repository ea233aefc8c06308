"""The one exception type a user sees: its message is a single line that says what to do."""


class HybridInferError(Exception):
    """A problem with the user's input (file, flag, prompt) rather than a bug in hybridinfer."""
