"""``vitdex db ...``: the catalog's schema."""

from __future__ import annotations

import click

from vitdex.cli.common import Context, handle_errors


@click.group("db")
def db_group() -> None:
    """Catalog schema commands."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
@handle_errors
def db_upgrade(obj: Context, revision: str) -> None:
    """Apply schema migrations to the catalog."""
    from vitdex.db.engine import current_revision, make_engine, upgrade

    settings = obj.settings
    engine = make_engine(settings.storage.resolved_database_url)
    before = current_revision(engine)
    upgrade(engine, revision)
    after = current_revision(engine)
    click.echo(f"catalog schema: {before or 'empty'} -> {after}")
