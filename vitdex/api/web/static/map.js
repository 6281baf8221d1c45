// Map page: a space's 2-D map on one canvas (100,000 points in one pass over a pixel
// buffer), coloured by label, library or cluster; hover shows the photo; a box or lasso
// drag selects into the shared selection; wheel or buttons zoom, Alt+drag or arrows pan.
"use strict";
(function () {
  const { api, attempt, el, toast, followJob, progressBar, selection, thumbUrl, fmt } = window.vitdex;
  const $ = (id) => document.getElementById(id);
  const canvas = $("map-canvas");
  const ctx = canvas.getContext("2d");
  const hover = $("map-hover");
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
    "#b07aa1", "#ff9da7", "#9c755f", "#17becf", "#bcbd22", "#8c564b"];
  const OTHER = "#9aa4b2";
  const HOVER_PX = 10; // nearest point within this many CSS pixels; also the bucket size

  let maps = [];        // GET /api/v1/maps entries
  let data = null;      // GET /api/v1/maps/{space}: ids, x, y, label, library_id, cluster
  let colours = null;   // Uint32Array: one RGBA per point
  let view = { scale: 1, dx: 0, dy: 0 }; // on top of the fit-to-canvas transform
  let tool = "box";
  let screen = null;    // Float32Array [2n]: each point's position in device pixels
  let buckets = null;   // { start, order, cols, rows } grid index over `screen`
  let picked = [];      // indices of the last box/lasso
  const dpr = () => window.devicePixelRatio || 1;

  // ------------------------------------------------------------------ loading
  const current = () => ({ space: $("map-space").value, method: $("map-method").value });
  const statusOf = ({ space, method }) => maps.find((m) => m.space === space && m.method === method);

  async function loadList() {
    const body = await api("/api/v1/maps");
    maps = body.maps;
    const params = new URLSearchParams(location.search);
    const spaces = [...new Set(maps.map((m) => m.space))];
    const keep = $("map-space").value || params.get("space");
    $("map-space").replaceChildren(...spaces.map((s) => el("option", { value: s, selected: s === keep }, s)));
    const method = $("map-method").value || params.get("method");
    $("map-method").replaceChildren(...body.methods.map((m) => el("option", { value: m, selected: m === method }, m.toUpperCase())));
    if (!spaces.length) {
      showEmpty("No vectors yet: index a library first (Libraries page).");
      $("map-compute").disabled = true;
    }
  }

  function showEmpty(text) {
    $("map-empty").textContent = text;
    $("map-empty").hidden = !text;
  }

  async function loadMap() {
    const info = statusOf(current());
    data = null;
    picked = [];
    if (!info) return draw();
    const state = info.state;
    $("map-compute").textContent = state === "fresh" ? "Recompute map" : "Compute map";
    $("map-state").textContent = state === "fresh"
      ? `computed ${fmt.date(info.computed_at)}`
      : state === "stale" ? "out of date: the photos changed since it was computed" : "not computed yet";
    if (state !== "fresh") {
      showEmpty(state === "stale" ? "This map is out of date: compute it again." : "No map yet: compute it.");
      return draw();
    }
    showEmpty("");
    const params = new URLSearchParams({ method: info.method });
    if ($("map-colour").value === "cluster" && $("map-run").value) params.set("cluster_run", $("map-run").value);
    data = await api(`/api/v1/maps/${encodeURIComponent(info.space)}?${params}`);
    $("map-count").textContent = data.ids.length.toLocaleString();
    recolour();
  }

  async function loadRuns() {
    const { space } = current();
    const { runs } = await api(`/api/v1/clusters?space=${encodeURIComponent(space)}&limit=100`);
    const wanted = new URLSearchParams(location.search).get("cluster_run");
    $("map-run").replaceChildren(...runs.map((r) => el("option", { value: r.id, selected: String(r.id) === wanted },
      `#${r.id} ${r.method} k=${r.k} (${fmt.date(r.created_at)})`)));
    if (!runs.length) $("map-run").append(el("option", { value: "" }, "no runs: cluster on the Clusters page"));
  }

  // ------------------------------------------------------------------ colours and legend
  function hexToRgba(hex) {
    const v = parseInt(hex.slice(1), 16);
    // Little-endian Uint32 over RGBA bytes: 0xAABBGGRR.
    return (255 << 24 | (v & 0xff) << 16 | (v >> 8 & 0xff) << 8 | v >> 16) >>> 0;
  }

  function recolour() {
    if (!data) return draw();
    const by = $("map-colour").value;
    const n = data.ids.length;
    // keys[i]: the point's category; names: category -> legend text, in legend order.
    let keys;
    const names = new Map();
    if (by === "library") {
      keys = data.library_id;
    } else if (by === "cluster" && data.cluster) {
      keys = data.cluster.map((c) => (c == null ? "none" : c));
    } else {
      keys = data.label;
    }
    const counts = new Map();
    for (const k of keys) counts.set(k, (counts.get(k) || 0) + 1);
    const order = [...counts.entries()].sort((a, b) => b[1] - a[1]);
    const colourOf = new Map();
    let next = 0;
    for (const [k] of order) {
      const special = k === -1 && by === "label" ? "no label" : k === "none" ? "not in the run" : k === -1 ? "noise" : null;
      if (special || next >= PALETTE.length) colourOf.set(k, OTHER);
      else colourOf.set(k, PALETTE[next++]);
      const text = special || (by === "label" ? data.label_names[k] : by === "library" ? `library ${k}` : `cluster ${k}`);
      names.set(k, text);
    }
    colours = new Uint32Array(n);
    const cache = new Map();
    for (let i = 0; i < n; i++) {
      const c = colourOf.get(keys[i]);
      let v = cache.get(c);
      if (v === undefined) { v = hexToRgba(c); cache.set(c, v); }
      colours[i] = v;
    }
    const shown = order.slice(0, PALETTE.length);
    const rest = order.slice(PALETTE.length).reduce((s, [, c]) => s + c, 0);
    $("map-legend").replaceChildren(
      ...shown.map(([k, c]) => el("li", {}, el("span", { class: "swatch", style: `background:${colourOf.get(k)}` }), `${names.get(k)} `, el("span", { class: "muted" }, c))),
      ...(rest ? [el("li", {}, el("span", { class: "swatch", style: `background:${OTHER}` }), "other ", el("span", { class: "muted" }, rest))] : []));
    draw();
  }

  // ------------------------------------------------------------------ drawing
  function resize() {
    const box = canvas.parentElement.getBoundingClientRect();
    const w = Math.max(300, Math.floor(box.width));
    const h = Math.max(300, Math.min(Math.floor(window.innerHeight - 180), Math.floor(w * 0.75)));
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    canvas.width = Math.floor(w * dpr());
    canvas.height = Math.floor(h * dpr());
  }

  /** Screen position (device pixels) = centre + pan + (data - 0.5) * s; y points up. */
  function transform() {
    const pad = 16 * dpr();
    const s = (Math.min(canvas.width, canvas.height) - 2 * pad) * view.scale;
    return { s, cx: canvas.width / 2 + view.dx, cy: canvas.height / 2 + view.dy };
  }

  function draw() {
    const w = canvas.width, h = canvas.height;
    const bg = getComputedStyle(document.documentElement).getPropertyValue("--card").trim() || "#ffffff";
    ctx.fillStyle = bg;
    ctx.fillRect(0, 0, w, h);
    screen = null;
    buckets = null;
    if (!data || !colours) return;
    const n = data.ids.length;
    const { s, cx, cy } = transform();
    const image = ctx.getImageData(0, 0, w, h);
    const px = new Uint32Array(image.data.buffer);
    screen = new Float32Array(2 * n);
    // Few points get large dots, 100,000 get 2-pixel ones; zooming in enlarges them a little.
    const base = n <= 200 ? 10 : n <= 2000 ? 6 : n <= 20000 ? 4 : 2;
    const size = Math.max(2, Math.round(base * dpr() * Math.min(3, Math.sqrt(view.scale))));
    const chosen = selection.ids();
    const ring = hexToRgba("#111111");
    // The map is drawn with y up; two passes so selected points sit on top.
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < n; i++) {
        const x = cx + (data.x[i] - 0.5) * s;
        const y = cy - (data.y[i] - 0.5) * s;
        if (pass === 0) { screen[2 * i] = x; screen[2 * i + 1] = y; }
        const isSel = chosen.size && chosen.has(data.ids[i]);
        if ((pass === 1) !== Boolean(isSel)) continue;
        const r = isSel ? size + 2 : size;
        const x0 = Math.round(x - r / 2), y0 = Math.round(y - r / 2);
        if (x0 >= w || y0 >= h || x0 + r < 0 || y0 + r < 0) continue;
        // A disc when dots are large enough to show one; selected ones get a dark rim.
        const half = (r - 1) / 2, outer = (half + 0.5) ** 2, inner = Math.max(0, half - 1) ** 2;
        for (let yy = Math.max(0, y0); yy < Math.min(h, y0 + r); yy++) {
          const row = yy * w;
          for (let xx = Math.max(0, x0); xx < Math.min(w, x0 + r); xx++) {
            const d = (xx - x0 - half) ** 2 + (yy - y0 - half) ** 2;
            if (r > 4 && d > outer) continue;
            px[row + xx] = isSel && (r <= 4 ? xx === x0 || yy === y0 : d > inner) ? ring : colours[i];
          }
        }
      }
    }
    ctx.putImageData(image, 0, 0);
    buildBuckets(n);
  }

  /** A grid over the canvas (cells of HOVER_PX): counting sort of the points by cell. */
  function buildBuckets(n) {
    const cell = HOVER_PX * dpr();
    const cols = Math.ceil(canvas.width / cell) + 1, rows = Math.ceil(canvas.height / cell) + 1;
    const cellOf = new Int32Array(n);
    const start = new Int32Array(cols * rows + 1);
    for (let i = 0; i < n; i++) {
      const cx = Math.floor(screen[2 * i] / cell), cy = Math.floor(screen[2 * i + 1] / cell);
      const c = cx < 0 || cy < 0 || cx >= cols || cy >= rows ? -1 : cy * cols + cx;
      cellOf[i] = c;
      if (c >= 0) start[c + 1]++;
    }
    for (let c = 0; c < cols * rows; c++) start[c + 1] += start[c];
    const fill = start.slice(0, -1);
    const order = new Int32Array(start[cols * rows]);
    for (let i = 0; i < n; i++) if (cellOf[i] >= 0) order[fill[cellOf[i]]++] = i;
    buckets = { start, order, cols, rows, cell };
  }

  function nearest(x, y) {
    if (!buckets) return -1;
    const { start, order, cols, rows, cell } = buckets;
    const cx = Math.floor(x / cell), cy = Math.floor(y / cell);
    let best = -1, bestD = cell * cell;
    for (let gy = Math.max(0, cy - 1); gy <= Math.min(rows - 1, cy + 1); gy++) {
      for (let gx = Math.max(0, cx - 1); gx <= Math.min(cols - 1, cx + 1); gx++) {
        const c = gy * cols + gx;
        for (let k = start[c]; k < start[c + 1]; k++) {
          const i = order[k];
          const d = (screen[2 * i] - x) ** 2 + (screen[2 * i + 1] - y) ** 2;
          if (d < bestD) { bestD = d; best = i; }
        }
      }
    }
    return best;
  }

  // ------------------------------------------------------------------ selection
  function pointsIn(test, x0, y0, x1, y1) {
    const out = [];
    if (!screen) return out;
    for (let i = 0; i < data.ids.length; i++) {
      const x = screen[2 * i], y = screen[2 * i + 1];
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && test(x, y)) out.push(i);
    }
    return out;
  }

  function inPolygon(poly) {
    return (x, y) => {
      let inside = false;
      for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
        const [xi, yi] = poly[i], [xj, yj] = poly[j];
        if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
      }
      return inside;
    };
  }

  function choose(indices, add) {
    picked = indices;
    $("map-picked").textContent = indices.length.toLocaleString();
    const ids = indices.map((i) => data.ids[i]);
    // set() over a spread: add(...ids) would overflow the argument list for 100,000 ids.
    selection.set(add ? [...selection.ids(), ...ids] : ids);
    if (ids.length) toast(`${selection.ids().size} photos selected`);
  }

  // ------------------------------------------------------------------ pointer
  const devicePoint = (event) => {
    const r = canvas.getBoundingClientRect();
    return [(event.clientX - r.left) * dpr(), (event.clientY - r.top) * dpr()];
  };
  let drag = null;

  canvas.addEventListener("pointerdown", (event) => {
    if (!data) return;
    canvas.setPointerCapture(event.pointerId);
    const [x, y] = devicePoint(event);
    const mode = event.altKey || tool === "pan" ? "pan" : tool;
    drag = { mode, x0: x, y0: y, path: [[x, y]], add: event.shiftKey, view: { ...view } };
    hover.hidden = true;
  });

  canvas.addEventListener("pointermove", (event) => {
    const [x, y] = devicePoint(event);
    if (!drag) return showHover(x, y, event);
    if (drag.mode === "pan") {
      view.dx = drag.view.dx + (x - drag.x0);
      view.dy = drag.view.dy + (y - drag.y0);
      return draw();
    }
    drag.path.push([x, y]);
    draw();
    ctx.save();
    ctx.strokeStyle = "#2b5fd9";
    ctx.fillStyle = "rgba(43, 95, 217, 0.12)";
    ctx.lineWidth = dpr();
    ctx.beginPath();
    if (drag.mode === "box") ctx.rect(drag.x0, drag.y0, x - drag.x0, y - drag.y0);
    else drag.path.forEach(([px, py], k) => (k ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
    ctx.closePath();
    ctx.fill();
    ctx.stroke();
    ctx.restore();
  });

  canvas.addEventListener("pointerup", (event) => {
    if (!drag) return;
    const [x, y] = devicePoint(event);
    const d = drag;
    drag = null;
    if (d.mode === "pan") return;
    // A lasso may end where it began: it moved if any point of its path is away from there.
    const moved = [...d.path, [x, y]].some(([px, py]) => Math.abs(px - d.x0) + Math.abs(py - d.y0) > 3 * dpr());
    if (!moved) {
      // A click toggles the nearest point.
      const i = nearest(x, y);
      if (i >= 0) { selection.toggle(data.ids[i]); picked = [i]; }
      return draw();
    }
    if (d.mode === "box") {
      choose(pointsIn(() => true, Math.min(d.x0, x), Math.min(d.y0, y), Math.max(d.x0, x), Math.max(d.y0, y)), d.add);
    } else {
      const xs = d.path.map((p) => p[0]), ys = d.path.map((p) => p[1]);
      choose(pointsIn(inPolygon(d.path), Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)), d.add);
    }
    draw();
  });

  canvas.addEventListener("pointerleave", () => { hover.hidden = true; });

  function showHover(x, y, event) {
    const i = nearest(x, y);
    if (i < 0) { hover.hidden = true; return; }
    const id = data.ids[i];
    const img = hover.querySelector("img");
    if (img.dataset.id !== String(id)) { img.dataset.id = String(id); img.src = thumbUrl(id); }
    const label = data.label[i] >= 0 ? data.label_names[data.label[i]] : "";
    hover.querySelector("span").textContent = `#${id}${label ? " · " + label : ""}`;
    const r = canvas.getBoundingClientRect();
    hover.style.left = Math.min(event.clientX - r.left + 14, r.width - 150) + "px";
    hover.style.top = Math.max(0, event.clientY - r.top - 60) + "px";
    hover.hidden = false;
  }

  /** Zoom by `factor` keeping the point under (px, py) in place. */
  function zoom(factor, px = canvas.width / 2, py = canvas.height / 2) {
    const f = Math.max(0.5, Math.min(200, view.scale * factor)) / view.scale;
    const cx0 = canvas.width / 2, cy0 = canvas.height / 2;
    view.dx = px - cx0 - (px - cx0 - view.dx) * f;
    view.dy = py - cy0 - (py - cy0 - view.dy) * f;
    view.scale *= f;
    draw();
  }

  canvas.addEventListener("wheel", (event) => {
    if (!data) return;
    event.preventDefault();
    const [x, y] = devicePoint(event);
    zoom(event.deltaY < 0 ? 1.25 : 0.8, x, y);
  }, { passive: false });

  canvas.addEventListener("keydown", (event) => {
    const step = 40 * dpr();
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[event.key]) {
      view.dx += moves[event.key][0];
      view.dy += moves[event.key][1];
      draw();
    } else if (event.key === "+" || event.key === "=") zoom(1.25);
    else if (event.key === "-") zoom(0.8);
    else if (event.key === "0") { view = { scale: 1, dx: 0, dy: 0 }; draw(); } else return;
    event.preventDefault();
  });

  // ------------------------------------------------------------------ controls
  document.querySelectorAll("[data-tool]").forEach((button) => button.addEventListener("click", () => {
    tool = button.dataset.tool;
    document.querySelectorAll("[data-tool]").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
    canvas.style.cursor = tool === "pan" ? "grab" : "crosshair";
  }));
  $("map-zoom-in").addEventListener("click", () => zoom(1.25));
  $("map-zoom-out").addEventListener("click", () => zoom(0.8));
  $("map-reset").addEventListener("click", () => { view = { scale: 1, dx: 0, dy: 0 }; draw(); });
  $("map-select-view").addEventListener("click", () => {
    if (data) choose(pointsIn(() => true, 0, 0, canvas.width, canvas.height), false);
    draw();
  });
  $("map-clear").addEventListener("click", () => { selection.clear(); picked = []; $("map-picked").textContent = "0"; draw(); });
  window.addEventListener("vitdex:selection", () => draw());

  $("map-compute").addEventListener("click", () => attempt(async () => {
    const { space, method } = current();
    const force = statusOf(current())?.state === "fresh";
    const { job } = await api("/api/v1/maps", { method: "POST", json: { space, method, force } });
    const [bar, set] = progressBar();
    const text = el("span", { class: "muted" });
    $("map-progress").replaceChildren(bar, text);
    $("map-progress").hidden = false;
    $("map-compute").disabled = true;
    try {
      const done = await followJob(job.id, (j) => {
        set(j.progress);
        text.textContent = `${j.state} ${j.done}${j.total != null ? "/" + j.total : ""}`;
      }, 500);
      if (done.state !== "succeeded") toast(`map ${done.state}${done.error ? ": " + done.error : ""}`, true);
      else toast(`map of ${space} ready: ${done.counts.points} points`);
    } finally {
      $("map-compute").disabled = false;
      $("map-progress").hidden = true;
    }
    await loadList();
    await loadMap();
  }));

  const syncUrl = () => {
    const params = new URLSearchParams(current());
    if ($("map-colour").value === "cluster" && $("map-run").value) params.set("cluster_run", $("map-run").value);
    history.replaceState(null, "", `/map?${params}`);
  };
  $("map-space").addEventListener("change", () => attempt(async () => { syncUrl(); await loadRuns(); await loadMap(); }));
  $("map-method").addEventListener("change", () => attempt(async () => { syncUrl(); await loadMap(); }));
  $("map-colour").addEventListener("change", () => attempt(async () => {
    $("map-run-field").hidden = $("map-colour").value !== "cluster";
    syncUrl();
    if ($("map-colour").value === "cluster" || (data && data.cluster)) await loadMap();
    else recolour();
  }));
  $("map-run").addEventListener("change", () => attempt(async () => { syncUrl(); await loadMap(); }));
  window.addEventListener("resize", () => { resize(); draw(); });

  resize();
  draw();
  attempt(async () => {
    await loadList();
    if (new URLSearchParams(location.search).get("cluster_run")) {
      $("map-colour").value = "cluster";
      $("map-run-field").hidden = false;
    }
    if ($("map-space").value) await loadRuns();
    await loadMap();
  });
})();
