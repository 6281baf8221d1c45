// Library page: the catalog as a thumbnail grid paged as you scroll, facet filters with
// counts in the sidebar (tags and heads' labels among them; state in the URL), and
// selection (click, shift-click, all matching) that the header's "Tag…" button tags.
"use strict";
(function () {
  const { api, attempt, toast, el, selection, fmt, tileGrid } = window.vitdex;
  const grid = document.getElementById("grid");
  const PAGE = 120;
  const FILTERS = ["library_id", "folder", "taken_after", "taken_before", "camera_make", "camera_model", "label", "tag", "hide_duplicates", "status", "head_label"];
  const facetsBox = document.getElementById("facets");
  const total = document.getElementById("total");
  const empty = document.getElementById("empty");
  const notes = document.getElementById("notes");
  const more = document.getElementById("more");
  const chips = document.getElementById("active-filters");
  const hideDuplicates = document.getElementById("hide-duplicates");
  let offset = 0, count = null, loading = false, generation = 0;

  const params = () => new URLSearchParams(location.search);
  function query(extra = {}) {
    const q = new URLSearchParams();
    const current = params();
    for (const name of FILTERS) for (const v of current.getAll(name)) if (v !== "") q.append(name, v);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return q.toString();
  }
  const tiles = tileGrid(grid, (id) => `/photos/${id}${query() ? "?" + query() : ""}`);

  /** Change the filters in the URL (value null removes) and show the new state. */
  function setFilters(changes) {
    const q = params();
    for (const [name, value] of Object.entries(changes)) {
      q.delete(name);
      if (value !== null && value !== "") q.set(name, value);
    }
    go(q);
  }
  function go(q) {
    const s = q.toString();
    history.pushState(null, "", s ? `/?${s}` : "/");
    show();
  }

  /** Add or drop one HEAD:LABEL; another label of the same head is replaced (a photo has
   * one label per head, so both at once would match nothing). */
  function toggleHeadLabel(value) {
    const q = params();
    const head = value.split(":")[0];
    const all = q.getAll("head_label");
    const next = all.includes(value) ? all.filter((v) => v !== value) : [...all.filter((v) => v.split(":")[0] !== head), value];
    q.delete("head_label");
    for (const v of next) q.append("head_label", v);
    go(q);
  }

  /** Each head's labels with their counts in the whole library (not under the filters). */
  function headFacet(heads) {
    const chosen = params().getAll("head_label");
    const groups = heads.filter((h) => h.labelled > 0).map((h) => el("div", { class: "head-group", dataset: { head: h.name } },
      el("h4", {}, el("a", { href: `/heads/${encodeURIComponent(h.name)}`, title: `Head ${h.name}: its report` }, h.name)),
      el("ul", {}, h.classes.map((label) => {
        const value = `${h.name}:${label}`;
        const on = chosen.includes(value);
        return el("li", {}, el("button", {
          type: "button", "aria-pressed": on ? "true" : "false", title: `Photos ${h.name} labelled ${label} (in the whole library)`,
          onclick: () => toggleHeadLabel(value),
        }, el("span", { class: "facet-value" }, label), el("span", { class: "count" }, (h.label_counts[label] ?? 0).toLocaleString())));
      }))));
    if (!groups.length) return null;
    return el("div", { class: "facet", dataset: { facet: "head_label" } }, el("h3", {}, "Heads"), groups);
  }

  function facet(title, name, values, current, describe = (v) => v.title || v.value) {
    if (!values.length) return null;
    return el("div", { class: "facet", dataset: { facet: name } },
      el("h3", {}, title),
      el("ul", {}, values.map((v) => {
        const on = current === v.value;
        return el("li", {}, el("button", {
          type: "button", "aria-pressed": on ? "true" : "false",
          onclick: () => setFilters({ [name]: on ? null : v.value }),
        }, el("span", { class: "facet-value" }, describe(v)), el("span", { class: "count" }, v.count.toLocaleString())));
      })));
  }

  function yearFacet(values) {
    const q = params();
    const after = q.get("taken_after"), before = q.get("taken_before");
    if (!values.length) return null;
    return el("div", { class: "facet", dataset: { facet: "year" } }, el("h3", {}, "Year"),
      el("ul", {}, values.map((v) => {
        const y = Number(v.value);
        const on = after === `${y}-01-01` && before === `${y + 1}-01-01`;
        return el("li", {}, el("button", {
          type: "button", "aria-pressed": on ? "true" : "false",
          onclick: () => setFilters(on ? { taken_after: null, taken_before: null } : { taken_after: `${y}-01-01`, taken_before: `${y + 1}-01-01` }),
        }, el("span", {}, v.value), el("span", { class: "count" }, v.count.toLocaleString())));
      })));
  }

  async function loadFacets(gen) {
    const [f, { heads }] = await Promise.all([api(`/api/v1/facets?${query()}`), api("/api/v1/heads")]);
    if (gen !== generation) return;
    const q = params();
    facetsBox.replaceChildren(...[
      facet("Library", "library_id", f.libraries, q.get("library_id"), (v) => fmt.name(v.title) || `#${v.value}`),
      facet("Tags", "tag", f.tags, q.get("tag")),
      headFacet(heads),
      facet("Status", "status", f.statuses, q.get("status")),
      facet("Camera make", "camera_make", f.camera_makes, q.get("camera_make")),
      facet("Camera model", "camera_model", f.camera_models, q.get("camera_model")),
      facet("Label", "label", f.labels, q.get("label")),
      yearFacet(f.years),
    ].filter(Boolean));
  }

  function showChips() {
    const q = params();
    const chipText = (n) => (n === "hide_duplicates" ? "duplicates hidden" : `${n.replace("_", " ")}: ${q.getAll(n).join(" + ")}`);
    // One chip per head label, each removing only its own.
    const headChips = q.getAll("head_label").filter(Boolean).map((v) =>
      el("button", { type: "button", class: "pill", title: `Remove the head label filter ${v}`,
        onclick: () => toggleHeadLabel(v) }, `head label: ${v} ✕`));
    chips.replaceChildren(...FILTERS.filter((n) => n !== "head_label" && q.get(n)).map((n) =>
      el("button", { type: "button", class: "pill", title: `Remove the ${n.replace("_", " ")} filter`,
        onclick: () => setFilters({ [n]: null }) }, `${chipText(n)} ✕`)), ...headChips);
    for (const name of ["folder", "taken_after", "taken_before"]) document.getElementById(name).value = q.get(name) || "";
    hideDuplicates.checked = q.get("hide_duplicates") === "true";
  }

  async function loadPage(gen) {
    if (loading || (count !== null && offset >= count)) return;
    loading = true;
    try {
      const page = await api(`/api/v1/images?${query({ limit: PAGE, offset })}`);
      if (gen !== generation) return;
      count = page.total;
      offset += page.images.length;
      total.textContent = `${count.toLocaleString()} photo${count === 1 ? "" : "s"}`;
      empty.hidden = count > 0;
      notes.hidden = !page.filter_notes.length;
      notes.replaceChildren(...page.filter_notes.map((n) => el("p", {}, n.message)));
      tiles.append(page.images.map((img) => ({
        id: img.id, path: img.path,
        failed: img.status === "failed" ? (img.error || "could not be read") : null,
        title: img.status === "failed" ? `${img.path}\n${img.error || ""}` : `${img.path}${img.taken_at ? "\n" + fmt.date(img.taken_at) : ""}`,
        badge: img.status === "indexed" ? null : img.status,
      })));
    } finally {
      loading = false;
    }
    // Keep filling while the sentinel is still on screen (a tall window, a short page).
    if (gen === generation && offset < count && more.getBoundingClientRect().top < innerHeight + 600) loadPage(gen);
  }

  function show() {
    generation += 1;
    offset = 0; count = null; loading = false;
    tiles.clear();
    showChips();
    const gen = generation;
    attempt(() => Promise.all([loadFacets(gen), loadPage(gen)]));
  }

  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) attempt(() => loadPage(generation));
  }, { rootMargin: "600px" }).observe(more);

  document.getElementById("folder-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setFilters({ folder: document.getElementById("folder").value.trim() || null });
  });
  document.getElementById("dates-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setFilters({ taken_after: document.getElementById("taken_after").value || null, taken_before: document.getElementById("taken_before").value || null });
  });
  document.getElementById("clear-filters").addEventListener("click", () => setFilters(Object.fromEntries(FILTERS.map((n) => [n, null]))));
  document.getElementById("select-all").addEventListener("click", () => attempt(async () => {
    const found = await api(`/api/v1/image-ids?${query()}`);
    selection.set([...selection.ids(), ...found.ids]); // no spread into arguments: 100k ids
    toast(found.truncated
      ? `selected the first ${found.ids.length.toLocaleString()} of ${found.total.toLocaleString()} matching`
      : `selected ${found.ids.length.toLocaleString()} matching photo${found.ids.length === 1 ? "" : "s"}`);
  }));
  document.getElementById("clear-selection").addEventListener("click", () => selection.clear());
  hideDuplicates.addEventListener("change", () => setFilters({ hide_duplicates: hideDuplicates.checked ? "true" : null }));
  // Tagging from the header changes the tag counts (and, filtered by a tag, the grid).
  window.addEventListener("vitdex:tags", () => { if (params().get("tag")) show(); else attempt(() => loadFacets(generation)); });
  window.addEventListener("popstate", show);
  show();
})();
