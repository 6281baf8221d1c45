"""Neighbours of a catalog image over HTTP against the same query in process.

    python -m bench.http [--vectors 100000] [--dim 768] [--requests 2000]
                         [--concurrency 4] [--out FILE]

Builds a catalog of N images under a temporary VITDEX_HOME (rows inserted with SQL, no
photos, no model: ``GET /api/v1/images/{id}/similar`` needs only the catalog and the
store), one space ``cls`` and a FAISS store holding N clustered, low-intrinsic-dimension
unit vectors keyed by the image ids (see :mod:`bench._catalog`). Then, in one run:

- in process: ``SearchService.similar(ids=[id], k=10)`` and, on the same query vector,
  the raw ``store.search`` it does inside; plus the cost of building and JSON-encoding
  the response the endpoint returns;
- over HTTP: ``vitdex serve`` as a subprocess on a free 127.0.0.1 port with the same
  VITDEX_* environment, one request at a time on one keep-alive connection;

alternating blocks of the two (A B B A), so that drifting load from other processes
falls on both. The target compares these unloaded latencies: HTTP p50 <= in-process
p50 + 2 ms. Then a bounded load (``--requests`` GETs, at most ``--max-seconds``) over
``--concurrency`` keep-alive connections gives the served p50/p99 and requests/s, next to
the in-process throughput of as many threads. A breakdown of the in-process query
(catalog lookups, vector fetch, search, response building, JSON) and the server's own
time per request (its /metrics histogram) say where the time goes. Medians; ids random.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import numpy.typing as npt

from bench._catalog import SPACE, build_catalog

TARGET_MS = 2.0
K = 10
#: The route template the server's metrics label requests with (parameter type dropped).
ROUTE = ('route="/api/v1/images/{image_id', '}/similar"')


# --------------------------------------------------------------------------- stats


def _ms(values: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and count of seconds, in milliseconds."""
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    arr = np.asarray(values) * 1000
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "n": len(values),
    }


# --------------------------------------------------------------------------- environment


def _environment(home: Path) -> dict[str, str]:
    """This process's environment without any VITDEX_* setting, plus the bench's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
    env.update(
        {
            "VITDEX_HOME": str(home),
            "VITDEX_SPACES": SPACE,
            "VITDEX_VECTOR_BACKEND": "faiss",
            "HF_HUB_OFFLINE": "1",  # nothing here needs the model; never reach out
        }
    )
    return env


# --------------------------------------------------------------------------- in process


@dataclass
class InProcess:
    """The search service, its store of the space, and a response encoder."""

    similar: Callable[[int], Any]
    search: Callable[[int], Any]
    respond: Callable[[Any], bytes]
    parts: Callable[[int], dict[str, float]]


def _in_process() -> InProcess:
    from litestar.serialization import encode_json

    from vitdex.api.schemas import SimilarOut
    from vitdex.config import load_settings
    from vitdex.db import repo
    from vitdex.db.engine import make_engine, session_factory
    from vitdex.search.results import QueryResult
    from vitdex.search.service import SearchService

    settings = load_settings()
    sessions = session_factory(make_engine(settings.storage.resolved_database_url))
    service = SearchService(settings, sessions)
    service.similar(ids=[1], k=K)  # opens the store and checks it against the catalog, once
    store = service._stores[SPACE]

    def similar(image_id: int) -> Any:
        return service.similar(ids=[image_id], k=K)[0]

    def search(image_id: int) -> Any:
        return store.search(store.get(np.asarray([image_id])), K + 1)

    def respond(result: Any) -> bytes:
        assert isinstance(result, QueryResult)
        out = SimilarOut(
            query=result.query,
            image_id=result.image_id,
            space=result.space,
            k=K,
            offset=0,
            hits=result.hits[:K],
        )
        encoded: bytes = encode_json(out)
        return encoded

    def parts(image_id: int) -> dict[str, float]:
        """The steps of ``SearchService.similar`` for one id, each timed on its own."""
        out: dict[str, float] = {}
        t = time.perf_counter()
        with sessions() as session:
            sp = repo.list_spaces(session)
            out["session + list_spaces"] = time.perf_counter() - t
            t = time.perf_counter()
            repo.get_image(session, image_id)
            out["get_image"] = time.perf_counter() - t
            t = time.perf_counter()
            vec = store.get(np.asarray([image_id]))
            out["store.get"] = time.perf_counter() - t
            t = time.perf_counter()
            raw = store.search(vec, K + 1)
            out["store.search"] = time.perf_counter() - t
            wanted = sorted({h.id for hits in raw for h in hits})
            t = time.perf_counter()
            repo.get_images(session, wanted)
            out["get_images (11)"] = time.perf_counter() - t
            t = time.perf_counter()
            repo.labels_of(session, wanted)
            out["labels_of (11)"] = time.perf_counter() - t
            t = time.perf_counter()
        out["session close"] = time.perf_counter() - t
        assert sp
        return out

    return InProcess(similar=similar, search=search, respond=respond, parts=parts)


# --------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """``vitdex serve`` in a subprocess, its output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        command = [sys.executable, "-m", "vitdex", "serve", "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Seconds until /ready said yes; raises if the server died or never did."""
        start = time.perf_counter()
        with httpx.Client(base_url=self.base, timeout=5) as client:
            while time.perf_counter() - start < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the server exited ({self.proc.returncode}):\n{self.tail()}"
                    )
                try:
                    if client.get("/ready").status_code == 200:
                        return time.perf_counter() - start
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{self.tail()}")

    def served(self, client: httpx.Client) -> tuple[float, int]:
        """(seconds, requests) the server's middleware counted on the similar route."""
        text = client.get("/metrics").text
        total, count = 0.0, 0
        for line in text.splitlines():
            if not all(part in line for part in (*ROUTE, 'status="200"')):
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("vitdex_http_request_duration_seconds_sum"):
                total += float(value)
            elif name.startswith("vitdex_http_request_duration_seconds_count"):
                count += int(float(value))
        return total, count

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _client(base: str) -> httpx.Client:
    """One keep-alive connection."""
    return httpx.Client(
        base_url=base,
        timeout=60,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def _get_similar(client: httpx.Client, image_id: int) -> None:
    reply = client.get(f"/api/v1/images/{image_id}/similar", params={"k": K})
    if reply.status_code != 200:
        raise RuntimeError(f"GET similar {image_id}: {reply.status_code} {reply.text[:300]}")
    hits = reply.json()["hits"]
    if len(hits) != K:
        raise RuntimeError(f"GET similar {image_id}: {len(hits)} hits, wanted {K}")


class AsgiSide:
    """The same app called in this process through ASGI: no socket, no uvicorn."""

    def __init__(self) -> None:
        from anyio.from_thread import start_blocking_portal

        from vitdex.api.app import create_app

        self._app = create_app()
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._client: httpx.AsyncClient = self._portal.call(self._open)

    async def _open(self) -> httpx.AsyncClient:
        app: Any = self._app  # an ASGI app; httpx's annotation is narrower than Litestar's
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://asgi", timeout=60
        )

    async def _get(self, image_id: int) -> float:
        t = time.perf_counter()
        reply = await self._client.get(f"/api/v1/images/{image_id}/similar", params={"k": K})
        seconds = time.perf_counter() - t
        if reply.status_code != 200:
            raise RuntimeError(f"ASGI similar {image_id}: {reply.status_code} {reply.text[:300]}")
        return seconds

    def get(self, image_id: int) -> float:
        """Seconds the app took to answer, timed inside the event loop."""
        return self._portal.call(self._get, image_id)

    def close(self) -> None:
        self._portal.call(self._client.aclose)
        self._portal_cm.__exit__(None, None, None)


# --------------------------------------------------------------------------- load


def _bounded_load(
    call: Callable[[Any, int], object],
    make_worker: Callable[[], Any],
    close_worker: Callable[[Any], None],
    ids: npt.NDArray[np.int64],
    concurrency: int,
    max_seconds: float,
) -> tuple[list[float], float, int]:
    """Run ``call(worker, id)`` over ``ids`` from ``concurrency`` threads, each with its
    own worker (a connection), stopping at the deadline; (latencies, wall s, errors)."""
    lock = threading.Lock()
    position = [0]
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + max_seconds
    workers = [make_worker() for _ in range(concurrency)]
    start_gate = threading.Barrier(concurrency + 1)

    def run(worker: Any) -> None:
        mine: list[float] = []
        start_gate.wait()
        while time.perf_counter() < deadline:
            with lock:
                i = position[0]
                position[0] += 1
            if i >= len(ids):
                break
            t = time.perf_counter()
            try:
                call(worker, int(ids[i]))
            except Exception as exc:
                with lock:
                    errors[0] += 1
                    if errors[0] <= 3:
                        print(f"  error: {exc}", flush=True)
                continue
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for th in threads:
        th.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join(max_seconds + 120)
    wall = time.perf_counter() - t0
    for w in workers:
        close_worker(w)
    return latencies, wall, errors[0]


def _thread_hop_seconds(n: int = 500) -> float:
    """Median cost of one ``anyio.to_thread.run_sync`` round trip (the handler's hop)."""
    import anyio
    import anyio.to_thread

    times: list[float] = []

    def nothing() -> None:
        return None

    async def hops() -> None:
        for _ in range(n):
            t = time.perf_counter()
            await anyio.to_thread.run_sync(nothing)
            times.append(time.perf_counter() - t)

    anyio.run(hops)
    return statistics.median(times)


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-ready results."""
    import faiss

    rng = np.random.default_rng(args.seed)
    results: dict[str, Any] = {
        "vectors": args.vectors,
        "dim": args.dim,
        "k": K,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="vitdex-bench-http-") as tmp:
        home = Path(tmp) / "home"
        env = _environment(home)
        os.environ.clear()
        os.environ.update(env)
        from vitdex.config import load_settings

        settings = load_settings()
        print(f"building a catalog of {args.vectors:,} images x {args.dim} in {home}", flush=True)
        built = build_catalog(settings, args.vectors, args.dim)
        print(
            f"  rows {built.rows_seconds:.1f} s, vectors {built.vectors_seconds:.1f} s",
            flush=True,
        )
        results["build_rows_s"] = built.rows_seconds
        results["build_vectors_s"] = built.vectors_seconds

        server = Server(env, Path(tmp) / "server.log")
        try:
            t = time.perf_counter()
            inproc = _in_process()
            results["inproc_open_s"] = time.perf_counter() - t
            results["server_ready_s"] = server.wait_ready()
            print(
                f"  in-process service open {results['inproc_open_s']:.1f} s, "
                f"server ready {results['server_ready_s']:.1f} s (port {server.port})",
                flush=True,
            )
            asgi = AsgiSide()
            client = _client(server.base)
            t = time.perf_counter()
            _get_similar(client, 1)  # the server opens its store on the first query
            results["server_first_query_s"] = time.perf_counter() - t
            # Warm-up of both sides on ids not measured.
            for image_id in rng.integers(1, args.vectors + 1, args.warmup).tolist():
                inproc.respond(inproc.similar(image_id))
                inproc.search(image_id)
                asgi.get(image_id)
                _get_similar(client, image_id)

            # ---- unloaded, alternating blocks: in-process (A) and HTTP (B), A B B A ...
            print(f"unloaded: {args.queries} queries each side, alternating blocks", flush=True)
            # A: SearchService in process; B: the app through ASGI; C: HTTP to the server.
            orders = (("A", "B", "C"), ("C", "B", "A"), ("B", "C", "A"), ("A", "C", "B"))
            ids = rng.integers(1, args.vectors + 1, args.queries).tolist()
            blocks = [ids[i : i + args.block] for i in range(0, len(ids), args.block)]
            t_similar: list[float] = []
            t_search: list[float] = []
            t_respond: list[float] = []
            t_http: list[float] = []
            t_json: list[float] = []
            t_asgi: list[float] = []
            t_health: list[float] = []
            served_before = server.served(client)
            for b, block in enumerate(blocks):
                for side in orders[b % len(orders)]:
                    for image_id in block:
                        if side == "A":
                            t0 = time.perf_counter()
                            result = inproc.similar(image_id)
                            t1 = time.perf_counter()
                            inproc.respond(result)
                            t2 = time.perf_counter()
                            inproc.search(image_id)
                            t3 = time.perf_counter()
                            t_similar.append(t1 - t0)
                            t_respond.append(t2 - t1)
                            t_search.append(t3 - t2)
                        elif side == "B":
                            t_asgi.append(asgi.get(image_id))
                        else:
                            t0 = time.perf_counter()
                            reply = client.get(f"/api/v1/images/{image_id}/similar?k={K}")
                            t1 = time.perf_counter()
                            if reply.status_code != 200 or len(reply.json()["hits"]) != K:
                                raise RuntimeError(f"similar {image_id}: {reply.text[:300]}")
                            t2 = time.perf_counter()
                            client.get("/health").raise_for_status()
                            t3 = time.perf_counter()
                            t_http.append(t1 - t0)
                            t_json.append(t2 - t1)
                            t_health.append(t3 - t2)
            served_after = server.served(client)
            n_served = served_after[1] - served_before[1]
            results["unloaded"] = {
                "store_search_ms": _ms(t_search),
                "similar_ms": _ms(t_similar),
                "respond_ms": _ms(t_respond),
                "asgi_ms": _ms(t_asgi),
                "http_ms": _ms(t_http),
                "client_json_ms": _ms(t_json),
                "health_http_ms": _ms(t_health),
                "server_mean_ms": 1000 * (served_after[0] - served_before[0]) / max(1, n_served),
            }

            # ---- where the in-process time goes
            parts: dict[str, list[float]] = {}
            for image_id in rng.integers(1, args.vectors + 1, args.parts).tolist():
                for name, seconds in inproc.parts(image_id).items():
                    parts.setdefault(name, []).append(seconds)
            results["parts_ms"] = {name: _ms(v) for name, v in parts.items()}
            results["thread_hop_ms"] = 1000 * _thread_hop_seconds()

            # ---- loaded: bounded in count and time
            print(
                f"loaded: {args.requests} requests over {args.concurrency} connections "
                f"(at most {args.max_seconds:.0f} s)",
                flush=True,
            )
            load_ids = rng.integers(1, args.vectors + 1, args.requests).astype(np.int64)
            served_before = server.served(client)
            lat, wall, errors = _bounded_load(
                _get_similar,
                lambda: _client(server.base),
                lambda c: c.close(),
                load_ids,
                args.concurrency,
                args.max_seconds,
            )
            served_after = server.served(client)
            n_served = served_after[1] - served_before[1]
            results["loaded_http"] = {
                **_ms(lat),
                "requests_per_s": len(lat) / wall,
                "wall_s": wall,
                "errors": errors,
                "server_mean_ms": 1000 * (served_after[0] - served_before[0]) / max(1, n_served),
            }
            n_inproc = min(args.requests, args.inproc_load)
            print(f"loaded in process: {n_inproc} queries over {args.concurrency} threads")
            lat_i, wall_i, errors_i = _bounded_load(
                lambda _w, i: inproc.respond(inproc.similar(i)),
                lambda: None,
                lambda _w: None,
                load_ids[:n_inproc],
                args.concurrency,
                args.max_seconds,
            )
            results["loaded_inproc"] = {
                **_ms(lat_i),
                "requests_per_s": len(lat_i) / wall_i,
                "wall_s": wall_i,
                "errors": errors_i,
            }
            client.close()
            asgi.close()
        finally:
            server.stop()
            log_lines = server.log_path.read_text(errors="replace").splitlines()
            results["server_log_lines"] = len(log_lines)
            results["server_access_log_lines"] = sum('" 200' in line for line in log_lines)
    return results


def _report(r: dict[str, Any]) -> list[tuple[str, bool]]:
    u = r["unloaded"]
    lh, li = r["loaded_http"], r["loaded_inproc"]
    print(
        f"\n{r['vectors']:,} x {r['dim']}, k={K}, {r['cpus']} CPUs, "
        f"faiss {r['faiss']} ({r['faiss_threads']} threads)"
    )
    print(f"\n{'unloaded (1 at a time)':<34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    rows = (
        ("store.search (raw, k+1)", u["store_search_ms"]),
        ("SearchService.similar", u["similar_ms"]),
        ("  + response build + JSON", u["respond_ms"]),
        ("app via ASGI in process (no socket)", u["asgi_ms"]),
        ("HTTP GET .../similar (c=1)", u["http_ms"]),
        ("  client: decode JSON reply", u["client_json_ms"]),
        ("HTTP GET /health (c=1)", u["health_http_ms"]),
    )
    for name, s in rows:
        print(f"{name:<34} {s['p50']:>8.2f} {s['p99']:>8.2f} {s['mean']:>8.2f}")
    print(f"{'  server-side (middleware) mean':<34} {'':>8} {'':>8} {u['server_mean_ms']:>8.2f}")
    overhead = u["http_ms"]["p50"] - u["similar_ms"]["p50"]
    app = u["asgi_ms"]["p50"] - u["similar_ms"]["p50"]
    wire = u["http_ms"]["p50"] - u["asgi_ms"]["p50"]
    catalog = u["similar_ms"]["p50"] - u["store_search_ms"]["p50"]
    print(
        f"p50 differences: HTTP - similar {overhead:+.2f} ms = app (ASGI - similar) {app:+.2f} ms"
        f" + server/socket/client (HTTP - ASGI) {wire:+.2f} ms; similar - search {catalog:+.2f} ms"
    )

    print(f"\n{'in-process parts (per query)':<34} {'p50 ms':>8} {'p99 ms':>8}")
    for name, s in r["parts_ms"].items():
        print(f"{'  ' + name:<34} {s['p50']:>8.3f} {s['p99']:>8.3f}")
    print(f"{'  anyio thread hop':<34} {r['thread_hop_ms']:>8.3f}")

    print(
        f"\n{'loaded (c=' + str(r['concurrency']) + ')':<34} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'req/s':>8} {'n':>6} {'errors':>6}"
    )
    for name, s in (("HTTP (keep-alive connections)", lh), ("in process (threads)", li)):
        print(
            f"{name:<34} {s['p50']:>8.2f} {s['p99']:>8.2f} {s['requests_per_s']:>8.1f} "
            f"{s['n']:>6} {s['errors']:>6}"
        )
    print(f"{'  server-side (middleware) mean':<34} {lh['server_mean_ms']:>8.2f}")
    return [
        (
            f"HTTP p50 <= in-process p50 + {TARGET_MS:.0f} ms "
            f"({u['http_ms']['p50']:.2f} vs {u['similar_ms']['p50']:.2f} ms, "
            f"{overhead:+.2f} ms)",
            overhead <= TARGET_MS,
        ),
        (
            f"load: {lh['n']} requests answered without error in {lh['wall_s']:.0f} s",
            lh["errors"] == 0 and lh["n"] > 0,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when a target fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--vectors", type=int, default=100_000, help="images in the catalog")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--requests", type=int, default=2000, help="GETs of the loaded phase")
    parser.add_argument("--concurrency", type=int, default=4, help="connections under load")
    parser.add_argument("--max-seconds", type=float, default=150.0, help="loaded phase bound")
    parser.add_argument("--queries", type=int, default=300, help="unloaded queries per side")
    parser.add_argument("--block", type=int, default=25, help="queries per alternating block")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--parts", type=int, default=100, help="queries of the breakdown")
    parser.add_argument("--inproc-load", type=int, default=400, help="in-process loaded queries")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.vectors < K + 1 or args.concurrency < 1 or args.requests < 1:
        parser.error("need --vectors > k, --concurrency >= 1 and --requests >= 1")
    # The client's own per-request INFO lines would be timed as part of every request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    t = time.perf_counter()
    results = run(args)
    results["total_s"] = time.perf_counter() - t
    targets = _report(results)
    for text, ok in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(
        f"(whole run {results['total_s']:.0f} s; the server wrote "
        f"{results['server_log_lines']} log lines, "
        f"{results['server_access_log_lines']} of them access lines)"
    )
    if args.out:
        results["targets"] = targets
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(ok for _, ok in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
