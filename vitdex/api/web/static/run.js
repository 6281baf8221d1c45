// Training run page: live step/total progress, the loss curve (inline SVG), checkpoints
// (download, sample grid, sha256), the config as a table, cancel and resume.
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
  let configShown = false;

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text != null) node.textContent = text;
    return node;
  }

  /** The loss per step as a line with labelled axes; our own few lines, no library. */
  function drawLoss(points) {
    const box = document.getElementById("loss-chart");
    if (!points.length) {
      box.replaceChildren(el("p", { class: "muted" }, "No loss reported yet."));
      return;
    }
    const W = 720, H = 240, L = 56, R = 12, T = 12, B = 32;
    const steps = points.map((p) => p.step), losses = points.map((p) => p.loss);
    const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
    let y0 = Math.min(...losses), y1 = Math.max(...losses);
    if (y1 - y0 < 1e-9) { y0 -= 0.5 * Math.abs(y0 || 1); y1 += 0.5 * Math.abs(y1 || 1); }
    const x = (s) => L + (W - L - R) * (s - x0) / (x1 - x0);
    const y = (v) => T + (H - T - B) * (1 - (v - y0) / (y1 - y0));
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "loss", "data-points": points.length });
    chart.append(svg("title", {}, `Loss over ${points.length} reported steps; last ${losses[losses.length - 1].toFixed(4)}`));
    // Enough decimals that the three labels differ, however narrow the range.
    const decimals = Math.min(8, Math.max(0, Math.ceil(-Math.log10((y1 - y0) / 2)) + 1));
    for (const f of [0, 0.5, 1]) {
      const v = y0 + f * (y1 - y0);
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
      chart.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(decimals)));
    }
    chart.append(svg("text", { x: L, y: H - 8 }, `step ${x0}`));
    if (points.length > 1) chart.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `step ${x1}`));
    chart.append(svg("polyline", { points: points.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" "), class: "line" }));
    for (const p of points.length <= 60 ? points : []) {
      chart.append(svg("circle", { cx: x(p.step), cy: y(p.loss), r: 3, class: "dot" }, null));
    }
    box.replaceChildren(chart);
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
    drawLoss((await api(`/api/v1/training-runs/${runId}/losses`)).points);
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
