"""The ``vitdex`` command line: the click group and one module per command family.

Nothing in the product imports this package; it is an edge, like the API's app factory.
"""

from vitdex.cli.main import cli, main

__all__ = ["cli", "main"]
