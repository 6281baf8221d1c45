"""``vitdex reindex`` and ``vitdex migrate-store``: rebuild or move the stored vectors
without the model."""

from __future__ import annotations

from typing import Any

import click

from vitdex.cli.common import (
    Context,
    err_console,
    handle_errors,
    open_catalog,
    print_json,
    progress_bar,
    stage_updater,
)


@click.command()
@click.option("--space", "space_name", required=True, help="The space to rebuild.")
@click.option(
    "--index",
    "spec",
    required=True,
    help="flat | hnsw[:M=32,efConstruction=200,efSearch=128] | "
    "ivf[:nlist=N,nprobe=N,code=flat|sq8|pq,pq_m=M,rerank=R]",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def reindex(obj: Context, space_name: str, spec: str, as_json: bool) -> None:
    """Rebuild a space's FAISS index as another type, from its stored vectors (no model)."""
    from vitdex.db import repo
    from vitdex.errors import ConfigError
    from vitdex.vectors.factory import open_store
    from vitdex.vectors.lease import writing

    settings = obj.settings
    if settings.vectors.vector_backend != "faiss":
        raise ConfigError(
            "reindex builds FAISS indexes; Qdrant builds its own HNSW "
            "(tune it with VITDEX_QDRANT_HNSW_M, VITDEX_QDRANT_HNSW_EF_CONSTRUCT, "
            "VITDEX_QDRANT_QUANTIZATION)"
        )
    with open_catalog(settings)() as session:
        space = repo.get_space(session, space_name)
    with writing(settings):  # a writer: no repair runs meanwhile
        store: Any = open_store(settings, space.name, space.dim, space.metric)
        with progress_bar(not as_json and err_console.is_terminal) as bar:
            update = stage_updater(bar, f"building {spec}", 1.0)
            result = store.reindex(
                spec, progress=lambda stage, fraction: update(fraction, description=stage)
            )
        described = store.describe()
        store.close()
    result["memory_bytes_per_vector"] = described.get("memory_bytes_per_vector")
    if as_json:
        print_json(result)
        return
    click.echo(
        f"{space.name}: {result['index_type']} over {result['count']} vectors "
        f"in {result['build_seconds']:.1f} s"
        + (f" (not in use yet: {result['fallback']})" if result.get("fallback") else "")
    )


@click.command("migrate-store")
@click.option("--to", "target", type=click.Choice(["faiss", "qdrant"]), required=True)
@click.option("--space", "space_names", multiple=True, help="Only these spaces.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def migrate_store_cmd(
    obj: Context, target: str, space_names: tuple[str, ...], as_json: bool
) -> None:
    """Copy every stored vector to another backend, without re-embedding (resumable)."""
    import numpy as np

    from vitdex.db import repo
    from vitdex.errors import ConfigError
    from vitdex.vectors.factory import open_store
    from vitdex.vectors.lease import writing
    from vitdex.vectors.migrate import migrate_store

    settings = obj.settings
    source_backend = settings.vectors.vector_backend
    if source_backend == target:
        raise ConfigError(
            f"the vectors are already on {target} (VITDEX_VECTOR_BACKEND={source_backend}); "
            "set VITDEX_VECTOR_BACKEND to the backend that holds them now"
        )
    sessions = open_catalog(settings)
    results = []
    # A writer for its whole run: a repair meanwhile could change the source under it.
    with writing(settings), sessions() as session:
        spaces = [repo.get_space(session, n) for n in space_names] or repo.list_spaces(session)

        def payloads(ids: np.ndarray) -> list[dict[str, Any]]:
            return repo.payloads(session, [int(i) for i in ids])

        for space in spaces:
            src = open_store(settings, space.name, space.dim, space.metric)
            dst = open_store(settings, space.name, space.dim, space.metric, backend=target)
            with progress_bar(not as_json and err_console.is_terminal) as bar:
                update = stage_updater(bar, space.name, None)
                copied = migrate_store(src, dst, payloads=payloads, progress=update)
            dst.flush()
            results.append({"space": space.name, "copied": copied, "vectors": dst.count()})
            src.close()
            dst.close()
    if as_json:
        print_json({"from": source_backend, "to": target, "spaces": results})
        return
    for row in results:
        click.echo(f"{row['space']}: {row['vectors']} vectors on {target} ({row['copied']} copied)")
    click.echo(f"now set VITDEX_VECTOR_BACKEND={target}")
