// Training run page: live step/total progress, the loss curve with the validation loss
// (inline SVG), the samples rendered during training (rows prompts, columns steps, click
// to enlarge), checkpoints (download, sample grid, sha256), the config as a table, cancel
// and resume.
"use strict";
(function () {
  const { api, attempt, el, toast, progressBar, fmt } = window.vitdex;
  const root = document.getElementById("run-page");
  const runId = Number(root.dataset.runId);
  const LIVE = ["queued", "running"];
  const [bar, setBar] = progressBar();
  document.getElementById("run-bar").append(bar);
  const cancelButton = document.getElementById("cancel-run");
  const resumeButton = document.getElementById("resume-run");
  const SVG = "http://www.w3.org/2000/svg";
  let shownCheckpoints = "";
  let shownSamples = "";
  let configShown = false;

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text != null) node.textContent = text;
    return node;
  }

  /** The training loss per step as a line, the validation loss as a second (dashed) one,
   * with labelled axes and a legend; our own few lines, no library. */
  function drawLoss(points, validation) {
    const box = document.getElementById("loss-chart");
    if (!points.length && !validation.length) {
      box.replaceChildren(el("p", { class: "muted" }, "No loss reported yet."));
      return;
    }
    const W = 720, H = 240, L = 56, R = 12, T = 12, B = 32;
    const all = [...points, ...validation];
    const steps = all.map((p) => p.step), losses = all.map((p) => p.loss);
    const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
    let y0 = Math.min(...losses), y1 = Math.max(...losses);
    if (y1 - y0 < 1e-9) { y0 -= 0.5 * Math.abs(y0 || 1); y1 += 0.5 * Math.abs(y1 || 1); }
    const x = (s) => L + (W - L - R) * (s - x0) / (x1 - x0);
    const y = (v) => T + (H - T - B) * (1 - (v - y0) / (y1 - y0));
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "loss", "data-points": points.length, "data-validation": validation.length });
    const last = (series) => series.length ? series[series.length - 1].loss.toFixed(4) : "none";
    chart.append(svg("title", {}, `Loss over ${points.length} reported steps; last ${last(points)}` +
      (validation.length ? `; validation loss at ${validation.length} steps, last ${last(validation)}` : "")));
    // Enough decimals that the three labels differ, however narrow the range.
    const decimals = Math.min(8, Math.max(0, Math.ceil(-Math.log10((y1 - y0) / 2)) + 1));
    for (const f of [0, 0.5, 1]) {
      const v = y0 + f * (y1 - y0);
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
      chart.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(decimals)));
    }
    chart.append(svg("text", { x: L, y: H - 8 }, `step ${x0}`));
    if (all.length > 1) chart.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `step ${x1}`));
    const line = (series, cls) => svg("polyline", { points: series.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" "), class: cls });
    if (points.length) chart.append(line(points, "line"));
    for (const p of points.length <= 60 ? points : []) {
      chart.append(svg("circle", { cx: x(p.step), cy: y(p.loss), r: 3, class: "dot" }, null));
    }
    if (validation.length) {
      chart.append(line(validation, "val-line"));
      for (const p of validation.length <= 200 ? validation : []) {
        chart.append(svg("circle", { cx: x(p.step), cy: y(p.loss), r: 4, class: "val-dot" }, null));
      }
      // Legend under the plot, between the step labels: which line is which.
      const legend = svg("g", { class: "legend" });
      const lx = (W - 250) / 2, ly = H - 12;
      legend.append(svg("line", { x1: lx, x2: lx + 24, y1: ly, y2: ly, class: "line" }));
      legend.append(svg("text", { x: lx + 30, y: ly + 4 }, "training loss"));
      legend.append(svg("line", { x1: lx + 125, x2: lx + 149, y1: ly, y2: ly, class: "val-line" }));
      legend.append(svg("text", { x: lx + 155, y: ly + 4 }, "validation loss"));
      chart.append(legend);
    }
    box.replaceChildren(chart);
  }

  /** Samples as a grid: one row per prompt, one column per step (newest right). */
  function showSamples(samples) {
    const key = samples.map((s) => `${s.step}:${s.index}`).join(",");
    if (key === shownSamples) return;
    shownSamples = key;
    document.getElementById("no-samples").hidden = samples.length > 0;
    const box = document.getElementById("samples");
    if (!samples.length) { box.replaceChildren(); return; }
    const steps = [...new Set(samples.map((s) => s.step))].sort((a, b) => a - b);
    const rows = new Map();
    for (const s of samples) {
      if (!rows.has(s.index)) rows.set(s.index, new Map());
      rows.get(s.index).set(s.step, s);
    }
    const indexes = [...rows.keys()].sort((a, b) => a - b);
    const head = el("tr", {}, el("th", { scope: "col", class: "prompt" }, "prompt"),
      ...steps.map((step) => el("th", { scope: "col" }, `step ${step}`)));
    const body = indexes.map((index) => {
      const row = rows.get(index);
      const first = [...row.values()][0];
      return el("tr", { dataset: { index } },
        el("th", { scope: "row", class: "prompt" }, first.prompt, el("span", { class: "seed" }, `seed ${first.seed}`)),
        ...steps.map((step) => {
          const s = row.get(step);
          if (!s) return el("td", {});
          const label = `step ${s.step} · ${s.prompt} · seed ${s.seed}`;
          const thumb = el("button", { type: "button", class: "thumb", title: label, "aria-label": `Enlarge ${label}`, dataset: { step: s.step, index: s.index } },
            el("img", { src: s.url, alt: label, loading: "lazy" }));
          thumb.addEventListener("click", () => enlarge(s, label));
          return el("td", {}, thumb);
        }));
    });
    box.replaceChildren(el("table", { class: "sample-grid" }, el("thead", {}, head), el("tbody", {}, ...body)));
    box.scrollLeft = box.scrollWidth; // the newest steps in view
  }

  function enlarge(sample, label) {
    const dialog = document.getElementById("sample-dialog");
    const img = document.getElementById("sample-large");
    img.src = sample.url;
    img.alt = label;
    document.getElementById("sample-caption").textContent = label;
    dialog.showModal();
  }
  document.getElementById("sample-dialog").addEventListener("click", (event) => {
    // A click on the backdrop (outside the figure) closes it.
    if (event.target === event.currentTarget) event.currentTarget.close();
  });

  function showMemory(bytes) {
    const line = document.getElementById("run-memory");
    line.hidden = bytes == null;
    line.textContent = bytes == null ? "" : `peak GPU memory ${fmt.bytes(bytes)}`;
  }

  function showConfig(config) {
    const rows = Object.entries(config || {}).sort(([a], [b]) => a.localeCompare(b))
      .map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k),
        el("td", {}, el("code", {}, v === null ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v)))));
    document.querySelector("#run-config tbody").replaceChildren(...rows);
  }

  async function showCheckpoints() {
    const { checkpoints } = await api(`/api/v1/checkpoints?run_id=${runId}`);
    const key = checkpoints.map((c) => `${c.id}:${c.status}`).join(",");
    if (key === shownCheckpoints) return;
    shownCheckpoints = key;
    document.getElementById("no-checkpoints").hidden = checkpoints.length > 0;
    document.getElementById("checkpoints").replaceChildren(...checkpoints.map((c) => el("section", { class: "card checkpoint", dataset: { id: c.id } },
      el("h3", {}, c.name, " ", el("span", { class: `pill ${c.status === "ready" ? "ok" : "error"}` }, c.status)),
      el("div", { class: "checkpoint-body" },
        c.sample_path
          ? el("a", { href: `/api/v1/checkpoints/${c.id}/sample`, target: "_blank", rel: "noopener" },
            el("img", { class: "sample", src: `/api/v1/checkpoints/${c.id}/sample`, alt: `Sample grid of ${c.name}` }))
          : el("p", { class: "muted" }, "No sample grid."),
        el("dl", { class: "meta" },
          el("dt", {}, "File"), el("dd", {}, el("code", {}, c.path)),
          el("dt", {}, "Size"), el("dd", {}, `${fmt.bytes(c.size_bytes)} · ${c.format}${c.half ? " · fp16" : ""}`),
          el("dt", {}, "sha256"), el("dd", {}, el("code", { class: "sha" }, c.sha256)),
          el("dt", {}, "Steps"), el("dd", {}, `${c.steps ?? ""}${c.final_loss != null ? ` · final loss ${c.final_loss.toFixed(4)}` : ""}`),
          el("dt", {}, "Created"), el("dd", {}, fmt.date(c.created_at))),
        el("a", { class: "button primary download", href: `/api/v1/training-runs/${runId}/checkpoints/${c.id}/file`, download: "" }, "Download")))));
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    const run = await api(`/api/v1/training-runs/${runId}`);
    const live = LIVE.includes(run.state);
    document.getElementById("run-title").textContent = `Training run ${run.id}`;
    const pill = document.getElementById("run-state");
    pill.textContent = run.state;
    pill.dataset.state = run.state;
    pill.className = `pill state-${run.state}`;
    // The buttons follow the state at once, with the pill (the job lookup below waits).
    cancelButton.hidden = !live;
    resumeButton.hidden = live || run.state === "succeeded";
    setBar(run.total_steps ? run.step / run.total_steps : null);
    document.getElementById("run-step").textContent = `step ${run.step}/${run.total_steps}` +
      (run.loss != null ? ` · loss ${run.loss.toFixed(4)}` : "");
    let phase = `${fmt.name(run.base_model)} (${run.version})` +
      (run.dataset_id ? ` · dataset ${run.dataset_id}` : "");
    if (run.job_id != null) {
      const job = await api(`/api/v1/jobs/${run.job_id}`);
      const c = job.counts || {};
      phase += ` · job ${job.id}` + (c.phase ? ` · ${c.phase}` : "") + (c.stage ? ` (${c.stage})` : "") +
        (c.message ? `: ${c.message}` : "") + (c.it_per_s ? ` · ${c.it_per_s.toFixed(2)} it/s` : "") +
        (live && job.eta_seconds != null ? ` · about ${Math.ceil(job.eta_seconds)} s left` : "") +
        (job.cancel_requested && live ? " · stopping" : "");
    }
    document.getElementById("run-phase").textContent = phase;
    const error = document.getElementById("run-error");
    error.hidden = !run.error;
    error.textContent = run.error || "";
    if (!configShown) { showConfig(run.config); configShown = true; }
    drawLoss((await api(`/api/v1/training-runs/${runId}/losses`)).points, run.validation || []);
    showSamples(run.samples || []);
    showMemory(run.peak_memory_bytes);
    await showCheckpoints();
    if (live) timer = setTimeout(() => attempt(refresh), 1000);
  }

  cancelButton.addEventListener("click", () => attempt(async () => {
    await api(`/api/v1/training-runs/${runId}/cancel`, { method: "POST" });
    toast("asked the run to stop (it saves a checkpoint first)");
    await refresh();
  }));
  resumeButton.addEventListener("click", () => attempt(async () => {
    await api(`/api/v1/training-runs/${runId}/resume`, { method: "POST" });
    toast("resumed");
    await refresh();
  }));
  attempt(refresh);
})();
