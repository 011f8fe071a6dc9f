"""``peft.tuners``: only what PEFT's tests import."""
