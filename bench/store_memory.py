"""Memory of a process serving a FAISS store: mapped raw vectors against resident copies.

    python -m bench.store_memory [--n 100000] [--dim 768] [--spec hnsw:...] [--out FILE]
    python -m bench.store_memory --folder DIR    # measure an existing store, built or not

Builds one store of ``n`` x ``dim`` vectors (bench.search's data), snapshots it, builds
the approximate index ``spec`` (HNSW by default), then starts a fresh process per leg
that opens the store and serves queries as the API would: 200 single queries, 10 batches
of 100 and a ``get`` of 100 vectors. Each leg reports, from ``/proc/self/status``:

- ``peak``: the process's peak resident set (VmHWM), minus what the imports alone held;
- ``anon``: private resident memory added (RssAnon): copies the process holds itself;
- ``file``: file pages mapped in (RssFile): the snapshot's pages that were read, shared
  with other processes and reclaimable by the OS.

Legs: ``vitdex``, the store as it is (raw vectors mapped, the index in memory);
``in-memory``, the layout that reads the snapshot into memory beside the index (two
copies of every vector with HNSW or IVF-Flat: the previous behaviour), served by raw
FAISS on the same files; ``vitdex-exact``, the store searched exactly (20 single
queries, one batch), which reads every mapped page. Medians of ``--repeats`` runs per
leg, in MB (10^6 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SPEC = "hnsw:M=32,efConstruction=100,efSearch=96"
LEGS = ("vitdex", "in-memory", "vitdex-exact")
K = 10
MB = 1e6


def _status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process, in bytes."""
    out: dict[str, int] = {}
    with Path("/proc/self/status").open(encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _serve(leg: str, folder: str, dim: int) -> dict[str, Any]:
    """One leg, in this (fresh) process: open the store, serve queries, measure."""
    import faiss

    from bench.search import make_vectors
    from vitdex.vectors.faiss.ann import parse_index_spec, search_parameters
    from vitdex.vectors.faiss.store import FaissStore

    singles = make_vectors(200, dim, seed=2)
    batches = [make_vectors(100, dim, seed=3 + b) for b in range(10)]
    store = FaissStore(folder, "bench", dim, durable=False, search_threads=1)
    # Reset the peak after the imports and the queries, so that it measures the store.
    with Path("/proc/self/clear_refs").open("w", encoding="ascii") as refs:
        refs.write("5")
    before = _status()
    started = time.perf_counter()
    if leg == "in-memory":
        meta = json.loads((Path(folder) / "meta.json").read_text())
        raw: Any = faiss.read_index(str(Path(folder) / meta["snapshot"]))  # all in memory
        ids = set(faiss.vector_to_array(raw.id_map).tolist())  # the store's id set
        index = faiss.read_index(str(Path(folder) / meta["ann"]["file"]))
        spec = parse_index_spec(meta["ann"]["spec"])
        params = search_parameters(spec, K, None)
        opened = time.perf_counter() - started
        for q in singles:
            index.search(q[None], K, params=params)
        for batch in batches:
            index.search(batch, K, params=params)
        picked = np.fromiter(ids, dtype=np.int64, count=len(ids))[:: max(1, len(ids) // 100)]
        raw.reconstruct_batch(picked[:100])
    else:
        if leg == "vitdex-exact":
            store.exact_filter_fraction = 2.0  # every search exact (a filter of all ids)
        count = store.count()
        opened = time.perf_counter() - started
        everything = None
        if leg == "vitdex-exact":  # exact search is slow: a tenth of the queries do
            everything, singles, batches = store.ids(), singles[:20], batches[:1]
        for q in singles:
            store.search(q, K, allowed_ids=everything)
        for batch in batches:
            store.search(batch, K, allowed_ids=everything)
        store.get(store.ids()[:: max(1, count // 100)][:100])
    after = _status()
    described = store.describe() if leg != "in-memory" else {}
    return {
        "leg": leg,
        "open_s": opened,
        "peak": after["VmHWM"] - before["VmRSS"],
        "anon": after["RssAnon"] - before["RssAnon"],
        "file": after["RssFile"] - before["RssFile"],
        "resident_bytes_per_vector": described.get("memory_bytes_per_vector"),
        "mapped_bytes_per_vector": described.get("mapped_bytes_per_vector"),
    }


def _run_leg(leg: str, folder: Path, dim: int) -> dict[str, Any]:
    """Run ``leg`` in a fresh process (nothing mapped or cached in this one's memory)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.store_memory", "--child", leg, str(folder), str(dim)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"leg {leg} failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def build(folder: Path, n: int, dim: int, spec: str) -> dict[str, float]:
    """Write ``n`` vectors, snapshot them and build ``spec``; seconds per step."""
    from bench.search import make_vectors
    from vitdex.vectors.faiss.store import FaissStore

    started = time.perf_counter()
    data = make_vectors(n, dim, seed=1)
    with FaissStore(folder, "bench", dim, durable=False) as store:
        for lo in range(0, n, 50_000):
            store.upsert(np.arange(lo, min(n, lo + 50_000)), data[lo : lo + 50_000])
        del data
        store.flush()
        written = time.perf_counter() - started
        report = store.reindex(spec)
    return {"write_s": written, "build_s": float(report["build_seconds"])}


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) a store and print each leg's memory, medians over the repeats."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--spec", default=DEFAULT_SPEC)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--legs", default=",".join(LEGS))
    parser.add_argument("--folder", type=Path, default=None, help="reuse (or keep) this store")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        leg, folder, dim = args.child
        print(json.dumps(_serve(leg, folder, int(dim))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "store"
        if not (folder / "meta.json").exists():
            steps = build(folder, args.n, args.dim, args.spec)
            print(f"built {args.n:,} x {args.dim}: {steps}", flush=True)
        raw_mb = args.n * args.dim * 4 / MB
        print(f"raw vectors {raw_mb:.0f} MB; {args.spec}")
        print(
            f"{'leg':<13} {'open s':>7} {'peak MB':>8} {'anon MB':>8} {'file MB':>8} "
            f"{'resident B/vec':>15} {'mapped B/vec':>13}"
        )
        rows = []
        for leg in [x for x in args.legs.split(",") if x]:
            runs = [_run_leg(leg, folder, args.dim) for _ in range(args.repeats)]
            row: dict[str, Any] = {"leg": leg, "runs": runs}
            for key in ("open_s", "peak", "anon", "file"):
                row[key] = statistics.median(r[key] for r in runs)
            for key in ("resident_bytes_per_vector", "mapped_bytes_per_vector"):
                row[key] = runs[-1][key]
            rows.append(row)
            per = row["resident_bytes_per_vector"]
            mapped = row["mapped_bytes_per_vector"]
            print(
                f"{leg:<13} {row['open_s']:>7.2f} {row['peak'] / MB:>8.0f} "
                f"{row['anon'] / MB:>8.0f} {row['file'] / MB:>8.0f} "
                f"{'-' if per is None else f'{per:,.0f}':>15} "
                f"{'-' if mapped is None else f'{mapped:,.0f}':>13}",
                flush=True,
            )
        by = {r["leg"]: r for r in rows}
        if "vitdex" in by and "in-memory" in by:
            ratio = by["vitdex"]["peak"] / by["in-memory"]["peak"]
            print(f"peak RSS, vitdex / in-memory: {ratio:.2f}")
        if args.out:
            args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
