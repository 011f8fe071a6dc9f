"""Stand-in for ``diffusers``: PEFT's shared test helpers import it, the custom-model tests never use it."""


class StableDiffusionPipeline:
    """Never constructed by the custom-model tests."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("diffusers is not installed: the custom-model tests do not need it")
