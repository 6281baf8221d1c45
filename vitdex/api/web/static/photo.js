// Photo page: the photo large, its facts and labels, its nearest neighbours in a chosen
// space, previous/next in the library order it was opened from (← →), selection, tags.
"use strict";
(function () {
  const { api, attempt, el, fileUrl, thumbUrl, selection, fmt } = window.vitdex;
  const root = document.getElementById("photo");
  const id = Number(root.dataset.id);
  // The library filters this photo was opened under: prev/next and "back" keep them.
  const FILTERS = ["library_id", "folder", "taken_after", "taken_before", "camera_make", "camera_model", "label", "tag", "hide_duplicates", "status"];
  const filters = new URLSearchParams();
  for (const [k, v] of new URLSearchParams(location.search)) if (FILTERS.includes(k)) filters.append(k, v);
  const qs = filters.toString() ? "?" + filters.toString() : "";
  const photoUrl = (other) => `/photos/${other}${qs}`;
  document.getElementById("back").href = "/" + qs;

  const toggle = document.getElementById("toggle-selection");
  function showSelected() {
    const on = selection.has(id);
    toggle.setAttribute("aria-pressed", on ? "true" : "false");
    toggle.textContent = on ? "Remove from selection" : "Add to selection";
  }
  toggle.addEventListener("click", () => selection.toggle(id));
  window.addEventListener("vitdex:selection", showSelected);
  showSelected();

  // "Add to dataset": include this photo by hand in a dataset (as an instance image).
  async function loadDatasets() {
    const { datasets } = await api("/api/v1/datasets?limit=200");
    if (!datasets.length) return;
    const choice = document.getElementById("dataset-choice");
    choice.replaceChildren(...datasets.map((d) => el("option", { value: d.id }, d.name)));
    document.getElementById("add-to-dataset").hidden = false;
    document.getElementById("add-dataset-button").addEventListener("click", () => attempt(async () => {
      const datasetId = Number(choice.value);
      await api(`/api/v1/datasets/${datasetId}/include`, { method: "POST", json: { image_ids: [id], role: "instance" } });
      const name = choice.selectedOptions[0]?.textContent || datasetId;
      window.vitdex.toast(`photo ${id} added to ${name}`);
    }));
  }
  attempt(loadDatasets);

  function fact(term, ...value) { return [el("dt", {}, term), el("dd", {}, ...value)]; }

  async function loadImage() {
    const [img, { libraries }] = await Promise.all([api(`/api/v1/images/${id}`), api("/api/v1/libraries")]);
    const lib = libraries.find((l) => l.id === img.library_id);
    document.getElementById("title").textContent = fmt.name(img.path);
    document.title = `${fmt.name(img.path)} · vitdex`;
    const large = document.getElementById("large");
    large.alt = fmt.name(img.path);
    if (img.status === "failed") {
      large.replaceWith(el("div", { class: "empty error" }, `This file could not be read: ${img.error || "unknown reason"}`));
    } else {
      large.src = fileUrl(id);
    }
    document.getElementById("caption").textContent = img.path;
    const camera = [img.camera_make, img.camera_model].filter(Boolean).join(" ");
    document.getElementById("meta").replaceChildren(...[
      fact("Path", el("code", {}, img.path)),
      fact("Size", fmt.bytes(img.size)),
      fact("Dimensions", img.width ? `${img.width} × ${img.height}${img.format ? " " + img.format : ""}` : "unknown"),
      fact("Taken", img.taken_at ? fmt.date(img.taken_at) : "unknown"),
      fact("Camera", camera || "unknown"),
      fact("Library", lib ? el("a", { href: `/?library_id=${lib.id}` }, lib.root) : `#${img.library_id}`),
      fact("Status", el("span", { class: img.status === "failed" ? "error" : "" }, img.status), img.error ? ` — ${img.error}` : ""),
    ].flat());
    const rows = img.labels.map((l) => el("tr", {},
      el("td", {}, el("a", { href: `/?label=${encodeURIComponent(l.label)}` }, l.label)),
      el("td", { class: "num" }, fmt.score(l.score))));
    document.querySelector("#labels tbody").replaceChildren(...rows);
    document.getElementById("no-labels").hidden = rows.length > 0;
    document.getElementById("labels").hidden = rows.length === 0;
    showTags(img.tags);
    return img;
  }

  // Tags: removable chips, and a field to add one (existing names offered as you type).
  const tagList = document.getElementById("tags");
  function showTags(names) {
    tagList.replaceChildren(...names.map((name) => el("li", { class: "tag-chip" },
      el("a", { href: `/?tag=${encodeURIComponent(name)}`, title: `Photos tagged “${name}”` }, name),
      el("button", { type: "button", class: "tag-remove", title: `Remove the tag “${name}”`, "aria-label": `Remove tag ${name}`,
        onclick: () => attempt(async () => {
          await window.vitdex.tags.apply(name, [id], false);
          window.vitdex.toast(`removed “${name}”`);
        }) }, "✕"))));
    document.getElementById("no-tags").hidden = names.length > 0;
  }
  async function reloadTags() {
    const img = await api(`/api/v1/images/${id}`);
    showTags(img.tags);
  }
  async function loadTagNames() {
    const names = await window.vitdex.tags.tagNames();
    document.getElementById("tag-names").replaceChildren(...names.map((n) => el("option", { value: n })));
  }
  const tagInput = document.getElementById("tag-input");
  document.getElementById("tag-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = tagInput.value.trim();
    if (!name) return;
    attempt(async () => {
      const { changed, tag } = await window.vitdex.tags.apply(name, [id], true);
      tagInput.value = "";
      window.vitdex.toast(changed ? `tagged “${tag.name}”` : `already tagged “${tag.name}”`);
    });
  });
  // Any tagging of this photo (here, or by the header's dialog) shows at once.
  window.addEventListener("vitdex:tags", (event) => {
    if (event.detail.ids.includes(id)) attempt(async () => { await reloadTags(); await loadTagNames(); });
  });
  attempt(loadTagNames);

  async function loadAdjacent() {
    const near = await api(`/api/v1/images/${id}/adjacent${qs}`);
    for (const [key, other] of [["prev", near.previous], ["next", near.next]]) {
      const link = document.getElementById(key);
      link.hidden = other == null;
      if (other != null) link.href = photoUrl(other);
    }
    document.getElementById("position").textContent = near.position ? `${near.position.toLocaleString()} of ${near.total.toLocaleString()}` : "";
  }

  const spaceSelect = document.getElementById("space");
  const kInput = document.getElementById("k");
  const note = document.getElementById("neighbours-note");
  const box = document.getElementById("neighbours");
  async function loadSpaces() {
    const { spaces, default: chosen } = await api("/api/v1/spaces");
    spaceSelect.replaceChildren(...spaces.map((s) => el("option", { value: s.name, selected: s.name === chosen }, `${s.name} (${s.dim}-d, ${s.count.toLocaleString()})`)));
  }
  async function loadNeighbours(img) {
    if (img.status !== "indexed") {
      note.hidden = false;
      note.textContent = `No neighbours: this photo is ${img.status}, so it has no vector.`;
      box.replaceChildren();
      return;
    }
    const k = Math.max(1, Math.min(100, Number(kInput.value) || 12));
    const q = new URLSearchParams({ k: String(k) });
    if (spaceSelect.value) q.set("space", spaceSelect.value);
    const found = await api(`/api/v1/images/${id}/similar?${q}`);
    note.hidden = found.hits.length > 0;
    note.textContent = "No neighbours in this space.";
    box.replaceChildren(...found.hits.map((h) => el("a", {
      class: "tile", href: photoUrl(h.image_id), title: `${h.path}\nscore ${fmt.score(h.score)}`,
      "aria-label": `${fmt.name(h.path)}, score ${fmt.score(h.score)}`,
    }, el("img", { src: thumbUrl(h.image_id), alt: "" }), el("span", { class: "badge" }, fmt.score(h.score)))));
  }

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName)) return;
    const link = document.getElementById(event.key === "ArrowLeft" ? "prev" : event.key === "ArrowRight" ? "next" : "");
    if (link && !link.hidden && link.href) { event.preventDefault(); location.href = link.href; }
  });

  attempt(async () => {
    const [img] = await Promise.all([loadImage(), loadSpaces(), loadAdjacent()]);
    await loadNeighbours(img);
    spaceSelect.addEventListener("change", () => attempt(() => loadNeighbours(img)));
    kInput.addEventListener("change", () => attempt(() => loadNeighbours(img)));
  });
})();
