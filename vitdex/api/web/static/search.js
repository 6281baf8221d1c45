// Search page: example photos (dropped, pasted, picked, by id, ?image_id=N or the
// selection), each liked (+) or disliked (−), make one query → similar photos with their
// scores, paged, with a minimum score the server pages past, a space, filters, and saved
// searches to store the query by name and load it again.
"use strict";
(function () {
  const { api, attempt, el, toast, selection, thumbUrl, fmt } = window.vitdex;
  const FILTERS = ["library_id", "folder", "taken_after", "taken_before", "camera_make", "camera_model", "label"];
  const MAX_DEPTH = 10000;
  const form = document.getElementById("settings");
  const field = (name) => document.getElementById(name);
  const results = field("results");
  const more = field("more");
  const end = field("end");
  const summary = field("summary");
  const notes = field("notes");
  const noResults = field("no-results");
  const list = field("examples");
  const tiles = window.vitdex.tileGrid(results, (id) => `/photos/${id}`);

  // Examples: {id} (a catalog photo) or {file, url}; each with positive true (+) or false (−).
  let examples = [];
  let nextOffset = 0, shown = 0, generation = 0;

  const minScore = () => (field("min-score").value === "" ? null : Number(field("min-score").value));
  const k = () => Math.max(1, Math.min(1000, Number(field("k").value) || 24));
  const tags = () => field("tag").value.split(",").map((t) => t.trim()).filter(Boolean);
  const weight = () => (field("negative-weight").value === "" ? 0.5 : Number(field("negative-weight").value));

  // Settings and filters start from the URL, so a search link opens the same search.
  const start = new URLSearchParams(location.search);
  for (const name of [...FILTERS, "k"]) if (start.get(name)) field(name).value = start.get(name);
  if (start.get("min_score")) field("min-score").value = start.get("min_score");
  if (start.getAll("tag").length) field("tag").value = start.getAll("tag").join(", ");
  field("hide_duplicates").checked = start.get("hide_duplicates") === "true";
  syncSlider();

  function syncSlider() {
    const min = minScore();
    field("min-score-range").value = String(min === null ? -1 : Math.max(-1, Math.min(1, min)));
  }

  function filterParams(q) {
    if (field("space").value) q.set("space", field("space").value);
    for (const name of FILTERS) { const v = field(name).value.trim(); if (v) q.set(name, v); }
    for (const t of tags()) q.append("tag", t);
    if (field("hide_duplicates").checked) q.set("hide_duplicates", "true");
    return q;
  }

  function params() {
    const q = filterParams(new URLSearchParams({ k: String(k()), offset: String(nextOffset) }));
    if (minScore() !== null) q.set("min_score", String(minScore()));
    if (examples.some((e) => !e.positive)) q.set("negative_weight", String(weight()));
    return q;
  }

  /** The request body: JSON when every example is a catalog photo, else multipart. */
  function body() {
    if (examples.every((e) => e.id)) {
      return { json: { image_ids: examples.filter((e) => e.positive).map((e) => e.id), negative_ids: examples.filter((e) => !e.positive).map((e) => e.id) } };
    }
    const data = new FormData();
    for (const e of examples) {
      if (e.id) data.append(e.positive ? "image_id" : "negative_id", String(e.id));
      else data.append(e.positive ? "file" : "negative_file", e.file, e.file.name || "pasted.png");
    }
    return { form: data };
  }

  // Tiles already fetched that fall under a minimum just typed are hidden at once; the
  // next page (or "Search again") asks the server for hits at or above it.
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
    const found = await api(`/api/v1/similar?${params()}`, { method: "POST", ...body() });
    if (gen !== generation) return;
    const first = tiles.tiles().length;
    tiles.append(found.hits.map((h) => ({ id: h.image_id, path: h.path, badge: fmt.score(h.score), title: `${h.path}\nscore ${fmt.score(h.score)}` })));
    tiles.tiles().slice(first).forEach((t, i) => { t.dataset.score = String(found.hits[i].score); });
    shown += found.hits.length;
    nextOffset = found.next_offset;
    notes.hidden = !found.filter_notes.length;
    notes.replaceChildren(...found.filter_notes.map((n) => el("p", {}, n.message)));
    const visible = applyMin();
    const done = nextOffset === null || nextOffset > MAX_DEPTH - k();
    more.hidden = done;
    end.hidden = !done || shown === 0;
    end.textContent = found.min_score !== null && nextOffset === null ? "Later results score below the minimum." : "No more results.";
    summary.hidden = false;
    const cut = found.min_score === null ? "" : ` · score ≥ ${fmt.score(found.min_score)}`;
    summary.textContent = `${visible} shown of ${shown} fetched · space ${found.space}${cut}`;
  }

  function run() {
    tiles.clear();
    more.hidden = true; end.hidden = true; summary.hidden = true; noResults.hidden = true;
    generation += 1;
    nextOffset = 0; shown = 0;
    if (!examples.length) return undefined;
    if (!examples.some((e) => e.positive)) { toast("Mark at least one example + (more like this).", true); return undefined; }
    const gen = generation;
    return attempt(() => fetchPage(gen));
  }

  // ---- the examples list

  function render() {
    list.replaceChildren(...examples.map((e, i) => {
      const name = e.id ? `Photo #${e.id}` : e.file.name || "pasted image";
      const toggle = el("button", {
        type: "button", class: "polarity" + (e.positive ? " positive" : " negative"),
        "aria-pressed": e.positive ? "true" : "false",
        title: e.positive ? "More like this (click: less like this)" : "Less like this (click: more like this)",
        "aria-label": `${name}: ${e.positive ? "positive" : "negative"} example, switch`,
        onclick: () => { e.positive = !e.positive; render(); run(); },
      }, e.positive ? "+" : "−");
      return el("li", { class: "example" + (e.positive ? "" : " negative"), dataset: { id: e.id || "" } },
        el("img", { src: e.id ? thumbUrl(e.id) : e.url, alt: e.id ? `Photo ${e.id}` : "The query photo", id: i === 0 ? "query-preview" : null }),
        e.id ? el("a", { href: `/photos/${e.id}`, id: i === 0 ? "query-name" : null }, `#${e.id}`) : el("span", { id: i === 0 ? "query-name" : null, class: "name", title: name }, name),
        toggle,
        el("button", { type: "button", class: "remove link", "aria-label": `Remove ${name}`, title: "Remove",
          onclick: () => { examples.splice(examples.indexOf(e), 1); if (e.url) URL.revokeObjectURL(e.url); render(); run(); } }, "×"));
    }));
    field("clear-examples").hidden = examples.length === 0;
    const ids = examples.filter((e) => e.id && e.positive).map((e) => e.id);
    const url = new URL(location.href);
    url.searchParams.delete("image_id");
    if (ids.length === 1 && examples.length === 1) url.searchParams.set("image_id", String(ids[0]));
    history.replaceState(null, "", url);
  }

  function addIds(ids, positive = true) {
    for (const id of ids) if (!examples.some((e) => e.id === id)) examples.push({ id, positive });
    render();
    run();
  }
  function addFiles(files) {
    const images = [...files].filter((f) => !f.type || f.type.startsWith("image/"));
    for (const f of files) if (!images.includes(f)) toast(`${f.name} is not an image`, true);
    if (!images.length) return;
    for (const file of images) examples.push({ file, url: URL.createObjectURL(file), positive: true });
    render();
    run();
  }

  field("file").addEventListener("change", (event) => { addFiles(event.target.files); event.target.value = ""; });
  const drop = field("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    const item = [...(event.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) { event.preventDefault(); addFiles([item.getAsFile()]); }
  });
  field("use-selection").addEventListener("click", () => {
    const ids = [...selection.ids()];
    if (!ids.length) toast("Nothing is selected: select photos in the library first.", true);
    else addIds(ids);
  });
  function addTyped() {
    const id = Number(field("add-id").value);
    if (!Number.isInteger(id) || id < 1) { toast("Type a photo id (a whole number).", true); return; }
    field("add-id").value = "";
    addIds([id]);
  }
  field("add-id-button").addEventListener("click", addTyped);
  field("add-id").addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); addTyped(); } });
  field("clear-examples").addEventListener("click", () => { examples = []; render(); run(); });

  // ---- settings

  field("min-score").addEventListener("input", () => { syncSlider(); applyMin(); });
  field("min-score-range").addEventListener("input", () => { field("min-score").value = field("min-score-range").value; applyMin(); });
  field("min-score-range").addEventListener("change", run);
  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  field("space").addEventListener("change", run);
  more.addEventListener("click", () => attempt(() => fetchPage(generation)));
  field("select-results").addEventListener("click", () => selection.add(...tiles.tiles().filter((t) => !t.parentElement.hidden).map((t) => Number(t.dataset.id))));
  field("clear-selection").addEventListener("click", () => selection.clear());

  // ---- saved searches

  async function loadSaved(selected) {
    const { saved_searches: saved } = await api("/api/v1/saved-searches");
    field("saved").replaceChildren(el("option", { value: "" }, saved.length ? "Load a saved search…" : "No saved searches yet"),
      ...saved.map((s) => el("option", { value: String(s.id), selected: s.name === selected }, s.name)));
    return saved;
  }

  async function save() {
    if (!examples.length) { toast("Add an example photo first.", true); return; }
    if (examples.some((e) => !e.id)) {
      toast("An uploaded photo cannot be saved in a search: index it first and add it by id, or remove it.", true);
      return;
    }
    const name = (prompt("Name of the saved search") || "").trim();
    if (!name) return;
    const filter = { library_id: field("library_id").value ? [Number(field("library_id").value)] : [], tag: tags(), hide_duplicates: field("hide_duplicates").checked };
    for (const f of FILTERS.slice(1)) filter[f] = field(f).value.trim() || null;
    const query = {
      name,
      image_ids: examples.filter((e) => e.positive).map((e) => e.id),
      negative_ids: examples.filter((e) => !e.positive).map((e) => e.id),
      negative_weight: weight(), min_score: minScore(), k: k(), space: field("space").value || null, filter,
    };
    let saved;
    try {
      saved = await api("/api/v1/saved-searches", { method: "POST", json: query });
    } catch (err) {
      if (err.status !== 409 || !confirm(`${err.message}\n\nReplace it?`)) throw err;
      saved = await api("/api/v1/saved-searches", { method: "POST", json: { ...query, replace: true } });
    }
    await loadSaved(saved.name);
    toast(`Saved search “${saved.name}”.`);
  }
  field("save-search").addEventListener("click", () => attempt(save));

  async function load(id) {
    const saved = await api(`/api/v1/saved-searches/${id}`);
    const q = saved.query;
    examples = [...q.image_ids.map((i) => ({ id: i, positive: true })), ...q.negative_ids.map((i) => ({ id: i, positive: false }))];
    field("k").value = String(q.k || 24);
    field("min-score").value = q.min_score === null ? "" : String(q.min_score);
    syncSlider();
    field("negative-weight").value = String(q.negative_weight);
    if (q.space) field("space").value = q.space;
    field("library_id").value = q.filter.library_id.length ? String(q.filter.library_id[0]) : "";
    for (const f of FILTERS.slice(1)) field(f).value = (q.filter[f] || "").slice(0, f.startsWith("taken") ? 10 : undefined);
    field("tag").value = q.filter.tag.join(", ");
    field("hide_duplicates").checked = q.filter.hide_duplicates;
    render();
    run();
  }
  field("saved").addEventListener("change", (event) => { if (event.target.value) attempt(() => load(event.target.value)); });

  render();
  attempt(async () => {
    const [{ spaces, default: chosen }, { libraries }] = await Promise.all([api("/api/v1/spaces"), api("/api/v1/libraries"), loadSaved()]);
    const wanted = start.get("space") || chosen;
    field("space").replaceChildren(...spaces.map((s) => el("option", { value: s.name, selected: s.name === wanted }, `${s.name} (${s.dim}-d)`)));
    field("library_id").append(...libraries.map((l) => el("option", { value: String(l.id), selected: start.get("library_id") === String(l.id) }, l.root)));
    const imageId = Number(start.get("image_id"));
    if (Number.isInteger(imageId) && imageId > 0) addIds([imageId]);
  });
})();
