"""``python -m vitdex`` runs the CLI."""

from vitdex.cli import main

main()
