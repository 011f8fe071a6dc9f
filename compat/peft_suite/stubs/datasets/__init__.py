"""Stand-in for ``datasets``: PEFT's test utilities import ``load_dataset``; the custom-model tests never call it."""


def load_dataset(*args: object, **kwargs: object) -> None:
    raise RuntimeError("datasets is not installed: the custom-model tests do not need it")
