// Clusters pages: /clusters starts a clustering (a job, followed live) and lists runs;
// /clusters/{id} shows a run's clusters by size with their medoids, and opens one as a
// grid of its members (paged) whose photos join the shared selection.
"use strict";
(function () {
  const { api, attempt, el, toast, followJob, progressBar, selection, thumbUrl, fmt } = window.vitdex;
  const $ = (id) => document.getElementById(id);
  const PAGE = 48;

  /** Arrow keys move the focus between the buttons of a grid. */
  function arrowKeys(grid) {
    grid.addEventListener("keydown", (event) => {
      const items = [...grid.querySelectorAll(":scope > button")];
      const at = items.indexOf(document.activeElement);
      if (at < 0) return;
      const perRow = Math.max(1, Math.round(grid.clientWidth / items[0].getBoundingClientRect().width));
      const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow }[event.key];
      if (!step) return;
      event.preventDefault();
      items[Math.max(0, Math.min(items.length - 1, at + step))].focus();
    });
  }

  // ------------------------------------------------------------------ /clusters
  async function listPage() {
    const form = $("cluster-form");
    const { maps } = await api("/api/v1/maps");
    const spaces = [...new Set(maps.map((m) => m.space))];
    $("cluster-space").replaceChildren(...spaces.map((s) => el("option", { value: s }, s)));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      attempt(async () => {
        const raw = $("cluster-k").value.trim() || "auto";
        const k = raw === "auto" ? "auto" : Number(raw);
        if (k !== "auto" && !Number.isInteger(k)) throw new Error('k must be a whole number or "auto"');
        const filter = {};
        const folder = $("cluster-folder").value.trim();
        const tags = $("cluster-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
        if (folder) filter.folder = folder;
        if (tags.length) filter.tag = tags;
        if ($("cluster-hide-dups").checked) filter.hide_duplicates = true;
        const { job } = await api("/api/v1/clusters", {
          method: "POST",
          json: { space: $("cluster-space").value, method: $("cluster-method").value, k, filter },
        });
        const [bar, set] = progressBar();
        const text = el("span", { class: "muted" });
        $("cluster-progress").replaceChildren(bar, text);
        $("cluster-progress").hidden = false;
        const done = await followJob(job.id, (j) => {
          set(j.progress);
          text.textContent = `${j.state} ${j.done}${j.total != null ? "/" + j.total : ""}`;
        }, 500);
        if (done.state === "succeeded") {
          const runId = done.counts.run_id;
          text.replaceChildren(el("a", { href: `/clusters/${runId}` }, `Open run ${runId}`),
            ` (${done.counts.clusters} clusters)`);
          toast(`clustering done: ${done.counts.clusters} clusters`);
        } else {
          $("cluster-progress").hidden = true;
          toast(`clustering ${done.state}${done.error ? ": " + done.error : ""}`, true);
        }
        await loadRuns();
      });
    });
    await loadRuns();
  }

  async function loadRuns() {
    const { runs } = await api("/api/v1/clusters?limit=100");
    $("no-runs").hidden = runs.length > 0;
    document.querySelector("#cluster-runs tbody").replaceChildren(...runs.map((r) => el("tr", {},
      el("td", {}, el("a", { href: `/clusters/${r.id}` }, `#${r.id}`)),
      el("td", {}, r.space),
      el("td", {}, r.method),
      el("td", { class: "num" }, r.k),
      el("td", { class: "num" }, r.n_images),
      el("td", { class: "num" }, fmt.score(r.score)),
      el("td", {}, fmt.date(r.created_at)),
      el("td", {}, el("a", { href: `/map?space=${encodeURIComponent(r.space)}&cluster_run=${r.id}` }, "On the map")))));
  }

  // ------------------------------------------------------------------ /clusters/{id}
  async function runPage(runId) {
    const run = await api(`/api/v1/clusters/${runId}?members_limit=0`);
    $("run-summary").textContent = `${run.method}, ${run.k} clusters of ${run.n_images} photos in space ${run.space}` +
      (run.score != null ? `, silhouette ${fmt.score(run.score)}` : "") + ` · ${fmt.date(run.created_at)}`;
    $("run-map").href = `/map?space=${encodeURIComponent(run.space)}&cluster_run=${run.id}`;
    const list = $("cluster-list");
    list.replaceChildren(...run.clusters.map((c) => {
      const ids = c.medoid_image_ids.length ? c.medoid_image_ids : (c.medoid_image_id ? [c.medoid_image_id] : []);
      return el("button", {
        type: "button", class: "card cluster-card", role: "listitem", "aria-expanded": "false",
        dataset: { label: c.label },
        onclick: (event) => openCluster(runId, c, event.currentTarget),
      },
      el("div", { class: "thumbs" }, ...ids.slice(0, 3).map((id) => el("img", { src: thumbUrl(id), alt: "", loading: "lazy" }))),
      el("strong", {}, c.noise ? "Noise" : `Cluster ${c.label}`),
      el("span", { class: "muted" }, `${c.size} photo${c.size === 1 ? "" : "s"}`));
    }));
    arrowKeys(list);
  }

  let shown = null; // { runId, cluster, offset, members }

  async function openCluster(runId, cluster, card, offset = 0) {
    document.querySelectorAll(".cluster-card").forEach((b) => b.setAttribute("aria-expanded", String(b === card)));
    const run = await api(`/api/v1/clusters/${runId}?cluster=${cluster.label}&members_limit=${PAGE}&members_offset=${offset}`);
    const members = run.clusters[0].members;
    shown = { runId, cluster, card, offset, members };
    $("members").hidden = false;
    $("members-title").textContent = `${cluster.noise ? "Noise" : "Cluster " + cluster.label} · ${cluster.size} photos`;
    $("members-range").textContent = `${offset + 1}–${offset + members.length} of ${cluster.size}`;
    $("members-prev").disabled = offset === 0;
    $("members-next").disabled = offset + members.length >= cluster.size;
    const grid = $("members-grid");
    grid.replaceChildren(...members.map((m) => el("button", {
      type: "button", class: "tile", role: "option", "aria-selected": String(selection.has(m.image_id)),
      title: m.path, dataset: { id: m.image_id },
      onclick: (event) => {
        selection.toggle(m.image_id);
        event.currentTarget.setAttribute("aria-selected", String(selection.has(m.image_id)));
      },
    }, el("img", { src: m.thumbnail_url, alt: fmt.name(m.path), loading: "lazy" }),
    el("span", { class: "badge" }, fmt.score(m.distance)))));
    $("members").scrollIntoView({ block: "nearest" });
  }

  function markSelected() {
    const chosen = selection.ids();
    document.querySelectorAll("#members-grid .tile").forEach((t) => t.setAttribute("aria-selected", String(chosen.has(Number(t.dataset.id)))));
  }

  function wireMembers() {
    arrowKeys($("members-grid"));
    $("members-prev").addEventListener("click", () => attempt(() => shown && openCluster(shown.runId, shown.cluster, shown.card, Math.max(0, shown.offset - PAGE))));
    $("members-next").addEventListener("click", () => attempt(() => shown && openCluster(shown.runId, shown.cluster, shown.card, shown.offset + PAGE)));
    $("members-select-page").addEventListener("click", () => {
      if (!shown) return;
      selection.set([...selection.ids(), ...shown.members.map((m) => m.image_id)]);
      markSelected();
    });
    $("members-select-all").addEventListener("click", () => attempt(async () => {
      if (!shown) return;
      const ids = [];
      for (let offset = 0; offset < shown.cluster.size; offset += 1000) {
        const run = await api(`/api/v1/clusters/${shown.runId}?cluster=${shown.cluster.label}&members_limit=1000&members_offset=${offset}`);
        ids.push(...run.clusters[0].members.map((m) => m.image_id));
      }
      selection.set([...selection.ids(), ...ids]);
      markSelected();
      toast(`${ids.length} photos of the cluster selected`);
    }));
    window.addEventListener("vitdex:selection", markSelected);
  }

  const runEl = $("run");
  if (runEl) {
    wireMembers();
    attempt(() => runPage(Number(runEl.dataset.runId)));
  } else {
    attempt(listPage);
  }
})();
