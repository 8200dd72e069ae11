"""Dataset builders (being written)."""


def register_cli(sub):
    pass
