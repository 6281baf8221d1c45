// Search page: a query photo (dropped, pasted, picked, ?image_id=N or the first selected)
// → similar photos with scores, paged, with a minimum score, a space and filters.
"use strict";
(function () {
  const { api, attempt, el, toast, selection, thumbUrl, fmt } = window.vitdex;
  const FILTERS = ["library_id", "folder", "taken_after", "taken_before", "camera_make", "camera_model", "label"];
  const form = document.getElementById("settings");
  const field = (name) => document.getElementById(name);
  const results = field("results");
  const more = field("more");
  const end = field("end");
  const summary = field("summary");
  const notes = field("notes");
  const noResults = field("no-results");
  const preview = field("query-preview");
  const tiles = window.vitdex.tileGrid(results, (id) => `/photos/${id}`);

  let query = null; // {imageId} or {file}
  let offset = 0, shown = 0, generation = 0;

  const minScore = () => (field("min-score").value === "" ? null : Number(field("min-score").value));
  const k = () => Math.max(1, Math.min(1000, Number(field("k").value) || 24));

  // Settings and filters start from the URL, so a search link opens the same search.
  const start = new URLSearchParams(location.search);
  for (const name of [...FILTERS, "k"]) if (start.get(name)) field(name).value = start.get(name);
  if (start.get("min_score")) field("min-score").value = start.get("min_score");

  function params() {
    const q = new URLSearchParams({ k: String(k()), offset: String(offset) });
    if (field("space").value) q.set("space", field("space").value);
    for (const name of FILTERS) { const v = field(name).value.trim(); if (v) q.set(name, v); }
    return q;
  }

  function applyMin() {
    const min = minScore();
    let visible = 0;
    for (const t of tiles.tiles()) {
      const hide = min !== null && Number(t.dataset.score) < min;
      t.parentElement.hidden = hide;
      if (!hide) visible += 1;
    }
    noResults.hidden = visible > 0 || tiles.tiles().length === 0;
    field("select-results").disabled = visible === 0;
    return visible;
  }

  async function fetchPage(gen) {
    const q = params();
    const found = query.imageId
      ? await api(`/api/v1/similar?${q}`, { method: "POST", json: { image_id: query.imageId } })
      : await api(`/api/v1/similar?${q}`, { method: "POST", form: (() => { const f = new FormData(); f.append("file", query.file); return f; })() });
    if (gen !== generation) return;
    const start = tiles.tiles().length;
    tiles.append(found.hits.map((h) => ({ id: h.image_id, path: h.path, badge: fmt.score(h.score), title: `${h.path}\nscore ${fmt.score(h.score)}` })));
    tiles.tiles().slice(start).forEach((t, i) => { t.dataset.score = String(found.hits[i].score); });
    offset += found.hits.length;
    shown += found.hits.length;
    notes.hidden = !found.filter_notes.length;
    notes.replaceChildren(...found.filter_notes.map((n) => el("p", {}, n.message)));
    const visible = applyMin();
    const last = found.hits.length ? found.hits[found.hits.length - 1].score : null;
    const min = minScore();
    // Stop when the page came back short or its last score is already below the minimum.
    const done = found.hits.length < k() || (min !== null && last !== null && last < min) || offset >= 10000 - k();
    more.hidden = done;
    end.hidden = !done || shown === 0;
    end.textContent = min !== null && last !== null && last < min ? "Later results score below the minimum." : "No more results.";
    summary.hidden = false;
    summary.textContent = `${visible} shown of ${shown} fetched · space ${found.space}`;
  }

  function run() {
    if (!query) return;
    generation += 1;
    offset = 0; shown = 0;
    tiles.clear();
    more.hidden = true; end.hidden = true;
    const gen = generation;
    return attempt(() => fetchPage(gen));
  }

  function useImage(imageId) {
    query = { imageId };
    preview.src = thumbUrl(imageId);
    preview.hidden = false;
    field("query-name").replaceChildren("Photo ", el("a", { href: `/photos/${imageId}` }, `#${imageId}`));
    const url = new URL(location.href);
    url.searchParams.set("image_id", String(imageId));
    history.replaceState(null, "", url);
    run();
  }
  function useFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) { toast(`${file.name} is not an image`, true); return; }
    query = { file };
    if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    field("query-name").textContent = file.name || "pasted image";
    const url = new URL(location.href);
    url.searchParams.delete("image_id");
    history.replaceState(null, "", url);
    run();
  }

  field("file").addEventListener("change", (event) => useFile(event.target.files[0]));
  const drop = field("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    useFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) { event.preventDefault(); useFile(item.getAsFile()); }
  });
  field("use-selection").addEventListener("click", () => {
    const [first] = selection.ids();
    if (first === undefined) toast("Nothing is selected: select photos in the library first.", true);
    else useImage(first);
  });
  field("min-score").addEventListener("input", applyMin);
  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  field("space").addEventListener("change", run);
  more.addEventListener("click", () => attempt(() => fetchPage(generation)));
  field("select-results").addEventListener("click", () => selection.add(...tiles.tiles().filter((t) => !t.parentElement.hidden).map((t) => Number(t.dataset.id))));
  field("clear-selection").addEventListener("click", () => selection.clear());

  attempt(async () => {
    const [{ spaces, default: chosen }, { libraries }] = await Promise.all([api("/api/v1/spaces"), api("/api/v1/libraries")]);
    const wanted = start.get("space") || chosen;
    field("space").replaceChildren(...spaces.map((s) => el("option", { value: s.name, selected: s.name === wanted }, `${s.name} (${s.dim}-d)`)));
    field("library_id").append(...libraries.map((l) => el("option", { value: String(l.id), selected: start.get("library_id") === String(l.id) }, l.root)));
    const imageId = Number(start.get("image_id"));
    if (Number.isInteger(imageId) && imageId > 0) useImage(imageId);
  });
})();
