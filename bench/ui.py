"""The web pages on a large catalog: grid and map, each next to the API call behind it.

    python -m bench.ui [--images 100000] [--dim 768] [--repeats 5] [--out FILE]

Builds a catalog of N images under a temporary VITDEX_HOME (rows inserted with SQL and a
FAISS store of clustered vectors, see :mod:`bench._catalog`); the newest photos, the ones
the first two pages of the grid show, get real JPEG files (so their thumbnails are made
and served as for a real library), the rest point at files no page asks for. Then
``vitdex serve`` runs in a subprocess and headless chromium (the system one, driven by
Playwright) measures, in one run:

- **grid**: from navigation to the first screen of thumbnails decoded (cold: thumbnails
  made on the way; warm: served from the thumbnail cache), and from scrolling to the end
  of the first page to the next page's first thumbnails decoded; beside them the API
  calls the page makes (``/api/v1/images`` one page, ``/api/v1/facets``), timed from
  this process on the same server;
- **map**: the ``map`` job's server time (PCA of N × dim) from the job's own timestamps,
  the points endpoint's time and bytes (raw and gzip-compressed), and the page's time
  from navigation to the canvas drawn with every point.

Medians over ``--repeats``; the CPU flags this machine reports are printed with them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select, update

from bench._catalog import SPACE, build_catalog
from bench.http import Server
from vitdex.devices import cpu_flags
from vitdex.testing.browser import CHROMIUM_ARGS, chromium_path

#: Tiles the grid asks for per page (the library page's PAGE).
PAGE = 120
#: Thumbnails that fill the first screen (1400 × 900 viewport) and must be decoded.
FIRST_SCREEN = 24
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _environment(home: Path, photos: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
    env.update(
        {
            "VITDEX_HOME": str(home),
            "VITDEX_SPACES": SPACE,
            "VITDEX_VECTOR_BACKEND": "faiss",
            "VITDEX_ALLOWED_ROOTS": str(photos),
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def _real_files(settings: Any, photos: Path, n: int) -> None:
    """Point the library at ``photos`` and give the newest ``n`` images real JPEGs."""
    from vitdex.db.engine import make_engine
    from vitdex.db.models import Image, Library

    engine = make_engine(settings.storage.resolved_database_url)
    rng = np.random.default_rng(0)
    with engine.begin() as conn:
        conn.execute(update(Library).values(root=str(photos)))
        newest = conn.execute(
            select(Image.id).order_by(Image.taken_at.desc().nulls_last(), Image.id.desc()).limit(n)
        ).scalars()
        for image_id in newest:
            path = photos / f"{image_id // 1000:04d}" / f"IMG_{image_id:07d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, (3,), dtype=np.uint8)
            pixels = np.clip(base + rng.integers(-40, 40, (600, 800, 3)), 0, 255).astype(np.uint8)
            PILImage.fromarray(pixels).save(path, quality=85)
            conn.execute(update(Image).where(Image.id == image_id).values(path=str(path)))
    engine.dispose()


def _timed_get(client: httpx.Client, path: str, repeats: int) -> tuple[float, int]:
    """Median seconds of ``repeats`` GETs of ``path`` and the body's size."""
    times, size = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - t)
        response.raise_for_status()
        size = len(response.content)
    return statistics.median(times), size


_DECODED = """([from, n]) => {
  const imgs = [...document.querySelectorAll('#grid img')].slice(from, from + n);
  return imgs.length === n && imgs.every((i) => i.complete && i.naturalWidth > 0);
}"""


def _wait(page: Any, script: str, arg: Any = None, timeout_s: float = 120) -> None:
    """Poll ``script`` until truthy (the pages' CSP forbids the eval that Playwright's
    ``wait_for_function`` uses; ``evaluate`` is not affected)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(script, arg):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for: {script}")
        page.wait_for_timeout(10)


def _grid(browser: Any, url: str) -> tuple[float, float]:
    """(first screen, next page) seconds for one fresh page."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    t = time.perf_counter()
    page.goto(f"{url}/", wait_until="commit")
    _wait(page, _DECODED, [0, FIRST_SCREEN])
    first = time.perf_counter() - t
    t = time.perf_counter()
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    _wait(page, f"document.querySelectorAll('#grid img').length >= {2 * PAGE}")
    page.locator("#grid img").nth(PAGE).scroll_into_view_if_needed()
    _wait(page, _DECODED, [PAGE, 12])
    following = time.perf_counter() - t
    context.close()
    return first, following


def _map_page(browser: Any, url: str, n: int) -> float:
    """Seconds from navigation to the map page showing all ``n`` points drawn."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    t = time.perf_counter()
    page.goto(f"{url}/map", wait_until="commit")
    _wait(page, f"document.getElementById('map-count')?.textContent.replace(/\\D/g, '') === '{n}'")
    took = time.perf_counter() - t
    context.close()
    return took


def _iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, serve, measure; returns the figures."""
    from playwright.sync_api import sync_playwright

    flags = cpu_flags()
    results: dict[str, Any] = {
        "images": args.images,
        "dim": args.dim,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "cpu_flags": [f for f in FLAGS_SHOWN if f in flags],
    }
    with tempfile.TemporaryDirectory(prefix="vitdex-bench-ui-") as tmp:
        home, photos = Path(tmp) / "home", Path(tmp) / "photos"
        env = _environment(home, photos)
        os.environ.clear()
        os.environ.update(env)
        from vitdex.config import load_settings

        settings = load_settings()
        print(f"building a catalog of {args.images:,} images x {args.dim} in {home}", flush=True)
        built = build_catalog(settings, args.images, args.dim)
        _real_files(settings, photos, 3 * PAGE)
        print(f"  rows {built.rows_seconds:.1f} s, vectors {built.vectors_seconds:.1f} s")
        server = Server(env, Path(tmp) / "serve.log")
        server.wait_ready(timeout=180)
        try:
            with httpx.Client(base_url=server.base, timeout=600) as client, sync_playwright() as pw:
                executable = args.chromium or chromium_path()
                if executable is None:
                    raise SystemExit("bench.ui needs chromium (apt-get install chromium)")
                browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
                # Grid: cold once (thumbnails made on the way), then warm.
                cold_first, cold_next = _grid(browser, server.base)
                warm = [_grid(browser, server.base) for _ in range(args.repeats)]
                api_page, api_page_bytes = _timed_get(client, f"/api/v1/images?limit={PAGE}", 20)
                api_next, _ = _timed_get(client, f"/api/v1/images?limit={PAGE}&offset={PAGE}", 20)
                api_facets, _ = _timed_get(client, "/api/v1/facets", args.repeats)
                results["grid"] = {
                    "first_screen_cold_s": cold_first,
                    "next_page_cold_s": cold_next,
                    "first_screen_warm_s": statistics.median(w[0] for w in warm),
                    "next_page_warm_s": statistics.median(w[1] for w in warm),
                    "api_images_page_s": api_page,
                    "api_images_page_bytes": api_page_bytes,
                    "api_images_next_page_s": api_next,
                    "api_facets_s": api_facets,
                }
                # Map: the job, then the points and the page.
                job = client.post("/api/v1/maps", json={"space": SPACE, "method": "pca"})
                job.raise_for_status()
                job_id = job.json()["job"]["id"]
                while True:
                    state = client.get(f"/api/v1/jobs/{job_id}").json()
                    if state["state"] not in ("queued", "running"):
                        break
                    time.sleep(0.5)
                if state["state"] != "succeeded":
                    raise RuntimeError(f"map job {state['state']}: {state['error']}")
                job_s = (_iso(state["finished_at"]) - _iso(state["started_at"])).total_seconds()
                points_s, points_bytes = _timed_get(
                    client, f"/api/v1/maps/{SPACE}?method=pca", args.repeats
                )
                body = client.get(f"/api/v1/maps/{SPACE}?method=pca").content
                page_s = statistics.median(
                    _map_page(browser, server.base, args.images) for _ in range(args.repeats)
                )
                results["map"] = {
                    "job_server_s": job_s,
                    "api_points_s": points_s,
                    "points_bytes": points_bytes,
                    "points_gzip_bytes": len(gzip.compress(body, 6)),
                    "page_drawn_s": page_s,
                }
                browser.close()
        finally:
            server.stop()
    return results


def report(results: dict[str, Any]) -> None:
    """Print the figures with the ratios page / API."""
    grid, map_ = results["grid"], results["map"]
    print(
        f"\n{results['images']:,} images x {results['dim']}, {results['cpus']} CPUs, "
        f"flags: {', '.join(results['cpu_flags']) or 'none of ' + ', '.join(FLAGS_SHOWN)}"
    )
    print("grid (median of warm runs; cold = thumbnails made on the way)")
    print(
        f"  first screen      {grid['first_screen_warm_s'] * 1000:8.0f} ms warm "
        f"{grid['first_screen_cold_s'] * 1000:8.0f} ms cold"
    )
    print(
        f"  next page         {grid['next_page_warm_s'] * 1000:8.0f} ms warm "
        f"{grid['next_page_cold_s'] * 1000:8.0f} ms cold"
    )
    next_ms = grid["api_images_next_page_s"] * 1000
    print(
        f"  API images page   {grid['api_images_page_s'] * 1000:8.1f} ms "
        f"({grid['api_images_page_bytes']:,} B); next {next_ms:.1f} ms"
    )
    print(f"  API facets        {grid['api_facets_s'] * 1000:8.1f} ms")
    print(
        f"  ratio first screen / (images + facets API): "
        f"{grid['first_screen_warm_s'] / (grid['api_images_page_s'] + grid['api_facets_s']):.1f}x"
    )
    print("map")
    print(f"  job (PCA, server) {map_['job_server_s']:8.2f} s")
    print(
        f"  API points        {map_['api_points_s'] * 1000:8.0f} ms, "
        f"{map_['points_bytes'] / 1e6:.2f} MB ({map_['points_gzip_bytes'] / 1e6:.2f} MB gzip)"
    )
    print(
        f"  page drawn        {map_['page_drawn_s'] * 1000:8.0f} ms "
        f"({map_['page_drawn_s'] / map_['api_points_s']:.1f}x the points call)"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chromium", default=None, help="default: the system chromium")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = run(args)
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
