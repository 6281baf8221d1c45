// Jobs page: every job with live progress (polled), kind, state, counts, error, ETA and
// cancel; below, the training runs with links to their pages.
"use strict";
(function () {
  const { api, attempt, el, toast, progressBar, fmt } = window.vitdex;
  const body = document.querySelector("#jobs tbody");
  const none = document.getElementById("no-jobs");
  const total = document.getElementById("jobs-total");
  const stateFilter = document.getElementById("job-state");
  const runsBody = document.querySelector("#runs tbody");
  const noRuns = document.getElementById("no-runs");
  const rows = new Map(); // job id -> {row, cells, set}
  const LIVE = ["queued", "running"];

  function eta(seconds) {
    if (seconds == null) return "";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }
  function counts(c) {
    return Object.entries(c || {})
      .filter(([, v]) => v !== null && v !== "" && typeof v !== "object")
      .map(([k, v]) => `${k} ${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : v}`)
      .join(" · ");
  }

  function cancel(job) {
    attempt(async () => {
      const after = await api(`/api/v1/jobs/${job.id}`, { method: "DELETE" });
      toast(`job ${job.id}: ${after.state === "cancelled" ? "cancelled" : "asked to stop"}`);
      refresh();
    });
  }

  function rowFor(job) {
    let entry = rows.get(job.id);
    if (!entry) {
      const [bar, set] = progressBar();
      const cells = {
        kind: el("td"), state: el("td"), progress: el("td", {}, bar, el("span", { class: "muted small" })),
        counts: el("td", { class: "small" }), eta: el("td"), started: el("td"), error: el("td", { class: "error small" }),
        action: el("td"),
      };
      const button = el("button", { type: "button", class: "danger", onclick: () => cancel(job) }, "Cancel");
      cells.action.append(button);
      const row = el("tr", { dataset: { id: job.id } }, el("td", { class: "num" }, job.id), ...Object.values(cells));
      entry = { row, cells, set, button };
      rows.set(job.id, entry);
    }
    const { cells, set, button } = entry;
    const runId = job.kind === "train" && job.params ? job.params.run_id : null;
    cells.kind.replaceChildren(runId ? el("a", { href: `/runs/${runId}` }, `train (run ${runId})`) : job.kind);
    cells.state.replaceChildren(el("span", { class: `pill state-${job.state}`, "data-state": job.state },
      job.state + (job.cancel_requested && LIVE.includes(job.state) ? " (stopping)" : "")));
    set(job.state === "succeeded" ? 1 : job.progress);
    cells.progress.lastChild.textContent = ` ${job.done}${job.total != null ? "/" + job.total : ""}`;
    cells.counts.textContent = counts(job.counts);
    cells.eta.textContent = LIVE.includes(job.state) ? eta(job.eta_seconds) : "";
    cells.started.textContent = fmt.date(job.started_at || job.created_at);
    cells.error.textContent = job.error || "";
    // Only a queued or running job can be stopped; a finished one shows no button.
    button.setAttribute("aria-label", `Cancel job ${job.id}`);
    button.title = "Ask the job to stop";
    button.hidden = !LIVE.includes(job.state) || job.cancel_requested;
    return entry.row;
  }

  async function loadRuns() {
    const { runs } = await api("/api/v1/training-runs?limit=20");
    noRuns.hidden = runs.length > 0;
    runsBody.replaceChildren(...runs.map((r) => el("tr", { dataset: { id: r.id } },
      el("td", { class: "num" }, el("a", { href: `/runs/${r.id}` }, r.id)),
      el("td", {}, el("span", { class: `pill state-${r.state}` }, r.state)),
      el("td", {}, `${r.step}/${r.total_steps}`),
      el("td", { class: "num" }, r.loss == null ? "" : r.loss.toFixed(4)),
      el("td", {}, el("code", {}, fmt.name(r.base_model))),
      el("td", {}, r.dataset_id ? el("a", { href: `/datasets/${r.dataset_id}` }, `dataset ${r.dataset_id}`) : ""),
      el("td", {}, fmt.date(r.created_at)))));
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const query = stateFilter.value ? `&state=${encodeURIComponent(stateFilter.value)}` : "";
      const page = await api(`/api/v1/jobs?limit=100${query}`);
      total.textContent = `${page.total} job${page.total === 1 ? "" : "s"}`;
      none.hidden = page.jobs.length > 0;
      const wanted = page.jobs.map(rowFor);
      // Keep rows (and the focus inside them) in place; only reorder when needed.
      if (wanted.length !== body.children.length || wanted.some((row, i) => body.children[i] !== row)) {
        body.replaceChildren(...wanted);
      }
      await loadRuns();
      // Poll quickly while something runs, slowly otherwise (a job may be queued elsewhere).
      timer = setTimeout(refresh, page.jobs.some((j) => LIVE.includes(j.state)) ? 1000 : 5000);
    } catch (err) {
      toast(err.message || String(err), true);
      timer = setTimeout(refresh, 5000);
    }
  }
  stateFilter.addEventListener("change", refresh);
  refresh();
})();
