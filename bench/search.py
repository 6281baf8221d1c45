"""Search speed and recall: exact and approximate indexes, vitdex against raw FAISS.

    python -m bench.search [--sizes 100000] [--queries 1000] [--dim 768] [--out FILE]
    python -m bench.search --sizes 1000000 --specs hnsw,ivf:code=sq8   # the 1M target

Vectors look like image embeddings: a few hundred cluster centres in a 48-d subspace,
mapped into ``dim`` dimensions by a random orthonormal matrix, plus small isotropic
noise, L2-normalised; the queries are held out from the same distribution. For each
index: build time, recall@10 against exact search, queries/s one at a time and in
batches of 100, bytes per vector, and the time per query of ``FaissStore.search`` over
raw FAISS searching the very same index object (the store's own overhead). Medians.

For compressed codes (SQ8, PQ) the store re-scores ``k * rerank`` candidates exactly on
its raw vectors; raw FAISS does the same work through ``IndexRefine`` over the store's
own raw flat index (no copy: the bench's ids are the raw vectors' positions), so both
sides return the same hits with the same scores. vitdex and raw FAISS are timed in the
same run: one untimed pass of each over the queries (the first read of a mapped page
faults; that should fall on neither side), then alternating whole passes (A B B A), so
that drifting load from other processes falls on both. Single queries are timed over
all queries, except for the exact index at sizes where it is slow.

1M x 768 float32 is 3 GB; with an HNSW build that takes well over 15 minutes on two
cores, so the default size is 100,000. Targets (checked at the largest size run): an
approximate index with recall@10 >= 0.95 at >= 20x the exact queries/s, and vitdex at
most 1.2x raw FAISS's time per query.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from vitdex.vectors.faiss.ann import parse_index_spec, search_parameters
from vitdex.vectors.faiss.store import FaissStore

TARGET_RECALL = 0.95
TARGET_SPEEDUP = 20.0
TARGET_OVERHEAD = 1.2
DEFAULT_SPECS = (
    "flat",
    "hnsw:M=32,efConstruction=100,efSearch=96",
    "ivf:nprobe=16",
    "ivf:code=sq8,nprobe=16",
    "ivf:code=pq,pq_m=96,nprobe=16,rerank=4",
)
K = 10
BATCH = 100


def make_vectors(
    n: int, dim: int, seed: int, *, centres: int = 300, sub: int = 48
) -> npt.NDArray[np.float32]:
    """``n`` clustered, low-intrinsic-dimension unit vectors (same model for any seed)."""
    model = np.random.default_rng(7)
    basis, _ = np.linalg.qr(model.standard_normal((dim, sub)))
    basis = basis.T.astype(np.float32)  # [sub, dim], orthonormal rows
    centre = model.standard_normal((centres, sub)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 50_000):  # chunks: no float64 or [n, dim] temporaries
        hi = min(n, lo + 50_000)
        low = centre[rng.integers(0, centres, hi - lo)]
        low += 0.5 * rng.standard_normal(low.shape, dtype=np.float32)
        x = low @ basis
        x += 0.02 * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:hi] = x
    return out


def _paired_medians(fa: Any, fb: Any, items: list[Any], rounds: int = 1) -> tuple[float, float]:
    """Median seconds per call of ``fa`` and ``fb`` over ``items``, passes alternated.

    One untimed pass of each first: at 1M the raw vectors are 3 GB of mapped pages, and
    whichever side first reads a candidate's page would pay its fault for both.
    """
    for fn in (fa, fb):
        for item in items:
            fn(item)
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(2 * rounds):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            fn, out = (fa, fb)[side], times[side]
            for item in items:
                t = time.perf_counter()
                fn(item)
                out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def _raw_searcher(store: FaissStore, text: str) -> tuple[Any, Any, int]:
    """The index object the store searches, parameters and k for raw FAISS's like call."""
    spec = parse_index_spec(text)
    if spec.exact or store._approx.index is None:
        return store._raw.base, None, K
    if spec.rescored:
        # The store's exact re-scoring, done by FAISS: IndexRefine reads the candidates'
        # raw vectors from the store's own flat index by position (= id here).
        flat = faiss.downcast_index(store._raw.base.index)
        refine = faiss.IndexRefine(store._approx.index, flat)
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = float(spec.rerank)
        params.base_index_params = search_parameters(spec, K * spec.rerank, None)
        return refine, params, K
    return store._approx.index, search_parameters(spec, K, None), K


def run_size(n: int, n_queries: int, dim: int, specs: list[str]) -> list[dict[str, Any]]:
    """Every spec at one size; one row per spec."""
    t = time.perf_counter()
    data = make_vectors(n, dim, seed=1)
    queries = make_vectors(n_queries, dim, seed=2)
    # Ids equal to positions in the raw flat index, so that raw FAISS's IndexRefine can
    # read the store's raw vectors (the store itself never relies on that).
    ids = np.arange(n, dtype=np.int64)
    print(f"\n{n:,} x {dim}: generated in {time.perf_counter() - t:.1f} s", flush=True)
    exact = faiss.IndexFlatIP(dim)
    exact.add(data)
    _, truth_pos = exact.search(queries, K)
    truth = [set(ids[row].tolist()) for row in truth_pos]
    del exact
    # Exact search is slow at 1M: time fewer single queries there (exact index only).
    few = queries[: max(20, min(n_queries, 20_000_000 // n))]
    batches = [queries[lo : lo + BATCH] for lo in range(0, n_queries, BATCH)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = FaissStore(Path(tmp), "bench", dim, durable=False)
        for lo in range(0, n, 50_000):
            store.upsert(ids[lo : lo + 50_000], data[lo : lo + 50_000])
        store.flush()
        for text in specs:
            report = store.reindex(text)
            info = store.describe()
            # The same index object the store searches: the difference is vitdex alone.
            raw, params, fetch = _raw_searcher(store, text)
            got = store.search(queries, K)
            rec = float(
                np.mean([len({h.id for h in r} & w) / K for r, w in zip(got, truth, strict=True)])
            )
            _, raw_labels = raw.search(queries, fetch, params=params)
            # How often raw FAISS's top K is exactly the store's (sanity: near 1).
            agree = float(
                np.mean(
                    [[h.id for h in r] == w for r, w in zip(got, raw_labels.tolist(), strict=True)]
                )
            )

            def vitdex(q: npt.NDArray[np.float32]) -> Any:
                return store.search(q, K)

            def plain(
                q: npt.NDArray[np.float32], index: Any = raw, p: Any = params, f: int = fetch
            ) -> Any:
                return index.search(q, f, params=p)

            exact_spec = parse_index_spec(text).exact
            singles = few if exact_spec else queries
            # Approximate searches take well under a millisecond: three rounds (six passes
            # a side) cost a few seconds and steady the medians; exact ones get one.
            rounds = 1 if exact_spec else 3
            one_v, one_r = _paired_medians(vitdex, plain, list(singles[:, None]), rounds)
            bat_v, bat_r = _paired_medians(vitdex, plain, batches, rounds)
            per_vec = info["index_bytes"] / n if info["index_bytes"] else info["snapshot_bytes"] / n
            row = {
                "n": n,
                "spec": text,
                "index_type": info["index_type"],
                "build_s": report["build_seconds"],
                "recall_at_10": rec,
                "same_as_raw": agree,
                "qps_single": 1 / one_v,
                "qps_batched": BATCH / bat_v,
                "raw_qps_single": 1 / one_r,
                "raw_qps_batched": BATCH / bat_r,
                "overhead_single": one_v / one_r,
                "overhead_batched": bat_v / bat_r,
                "index_bytes_per_vector": per_vec,
                # Resident (ids, index) apart from mapped (the raw vectors' snapshot).
                "memory_bytes_per_vector": info["memory_bytes_per_vector"],
                "mapped_bytes_per_vector": info.get("mapped_bytes_per_vector"),
            }
            rows.append(row)
            print(_line(row), flush=True)
        store.close()
    return rows


_HEADER = (
    f"{'n':>9} {'index':<24} {'build s':>8} {'R@10':>6} {'q/s 1':>8} {'q/s 100':>9} "
    f"{'vs raw 1':>8} {'vs raw100':>9} {'B/vec':>7} {'=raw':>5}"
)


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['n']:>9,} {r['index_type']:<24} {r['build_s']:>8.1f} {r['recall_at_10']:>6.3f} "
        f"{r['qps_single']:>8.0f} {r['qps_batched']:>9.0f} {r['overhead_single']:>7.2f}x "
        f"{r['overhead_batched']:>8.2f}x {r['index_bytes_per_vector']:>7.0f} "
        f"{r['same_as_raw']:>5.2f}"
    )


def verdict(rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """PASS/FAIL lines for the targets, at the largest size that was run."""
    n = max(r["n"] for r in rows)
    at = [r for r in rows if r["n"] == n]
    flat = next((r for r in at if r["spec"] == "flat"), None)
    out = []
    if flat is not None:
        good = [
            r
            for r in at
            if r["spec"] != "flat"
            and r["recall_at_10"] >= TARGET_RECALL
            and r["qps_single"] >= TARGET_SPEEDUP * flat["qps_single"]
        ]
        best = max(
            (r["qps_single"] / flat["qps_single"] for r in at if r["spec"] != "flat"), default=0
        )
        out.append(
            (
                f"at {n:,}: an index with recall@10 >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:.0f}x "
                f"exact q/s ({', '.join(r['index_type'] for r in good) or 'none'}; best speed-up "
                f"{best:.1f}x)",
                bool(good),
            )
        )
    worst = max(r["overhead_single"] for r in at)
    out.append(
        (
            f"at {n:,}: vitdex over raw FAISS <= {TARGET_OVERHEAD}x per query (worst {worst:.2f}x)",
            worst <= TARGET_OVERHEAD,
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when a target fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100000", help="comma-separated store sizes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--specs", default=";".join(DEFAULT_SPECS), help="';'-separated specs")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    specs = [s for s in args.specs.split(";") if s.strip()]
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    print(_HEADER)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        rows.extend(run_size(n, args.queries, args.dim, specs))
    print("\n" + _HEADER)
    for r in rows:
        print(_line(r))
    results = verdict(rows)
    for text, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "targets": results}, indent=2) + "\n")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
