"""The one error type of ``peftkit finetune`` for bad input: the CLI prints it as one line."""

from peftkit.errors import PeftkitError


class FinetuneError(PeftkitError, ValueError):
    """Something the user passed (data, model folder, options) cannot be used; the message says what to do."""
