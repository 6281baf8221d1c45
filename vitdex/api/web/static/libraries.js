// Libraries page: list, add (indexes as a job), rescan, forget.
"use strict";
(function () {
  const { api, attempt, el, toast, followJob, progressBar, fmt } = window.vitdex;
  const body = document.querySelector("#libraries tbody");
  const none = document.getElementById("no-libraries");
  const jobCells = new Map(); // library id -> cell showing its running job

  function watch(libraryId, job) {
    const cell = jobCells.get(libraryId);
    if (!cell) return;
    const [bar, set] = progressBar();
    const text = el("span", { class: "muted" });
    cell.replaceChildren(bar, text);
    followJob(job.id, (j) => {
      set(j.progress);
      text.textContent = `${j.state} ${j.done}${j.total != null ? "/" + j.total : ""}`;
    }).then((j) => {
      toast(`library ${libraryId}: ${j.kind} ${j.state}${j.error ? ": " + j.error : ""}`, j.state === "failed");
      load();
    }).catch((err) => toast(err.message, true));
  }

  async function load() {
    const { libraries } = await api("/api/v1/libraries");
    none.hidden = libraries.length > 0;
    body.replaceChildren(...libraries.map((lib) => {
      const jobCell = el("td");
      jobCells.set(lib.id, jobCell);
      const counts = lib.images || {};
      return el("tr", { dataset: { id: lib.id } },
        el("td", {}, el("code", {}, lib.root)),
        el("td", { class: "num" }, counts.indexed || 0),
        el("td", { class: "num" }, counts.pending || 0),
        el("td", { class: "num" }, counts.failed ? el("a", { href: `/?library_id=${lib.id}&status=failed` }, counts.failed) : 0),
        el("td", {}, fmt.date(lib.last_scan_at)),
        jobCell,
        el("td", {},
          el("button", { type: "button", onclick: () => attempt(async () => {
            const { job } = await api(`/api/v1/libraries/${lib.id}/scan`, { method: "POST", json: {} });
            watch(lib.id, job);
          }) }, "Rescan"), " ",
          el("button", { type: "button", class: "danger", onclick: () => attempt(async () => {
            if (!confirm(`Forget ${lib.root}? Its catalog rows and vectors are removed; the photos stay on disk.`)) return;
            const gone = await api(`/api/v1/libraries/${lib.id}`, { method: "DELETE" });
            toast(`forgot ${gone.root} (${gone.images_removed} images)`);
            load();
          }) }, "Forget")));
    }));
  }

  document.getElementById("add-library").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("library-path");
    attempt(async () => {
      const { library, job } = await api("/api/v1/libraries", { method: "POST", json: { path: input.value.trim() } });
      input.value = "";
      await load();
      watch(library.id, job);
    });
  });
  attempt(load);
})();
