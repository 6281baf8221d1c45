// Datasets page: the list, and a new dataset curated from the selected photos (the seeds).
"use strict";
(function () {
  const { api, attempt, el, toast, selection, thumbUrl, fmt } = window.vitdex;
  const body = document.querySelector("#datasets tbody");
  const none = document.getElementById("no-datasets");
  const seedsBox = document.getElementById("seeds");
  const note = document.getElementById("seed-note");
  const form = document.getElementById("new-dataset");
  const createButton = document.getElementById("create-dataset");

  function showSeeds() {
    const ids = [...selection.ids()];
    createButton.disabled = ids.length === 0;
    note.textContent = ids.length
      ? `${ids.length} selected photo${ids.length > 1 ? "s" : ""} will be the seeds: the dataset is their nearest neighbours. Press Delete on a photo to drop it.`
      : "Select photos first (in the library, a search or the map): they become the seeds whose neighbours make the dataset.";
    seedsBox.replaceChildren(...ids.map((id) => el("div", {
      class: "tile seed", tabindex: "0", role: "button", "aria-label": `Seed photo ${id}: press Delete to drop it`,
      dataset: { id },
      onkeydown: (event) => { if (event.key === "Delete" || event.key === "Backspace") selection.remove(id); },
    }, el("img", { src: thumbUrl(id), alt: `photo ${id}`, loading: "lazy" }),
      el("button", { type: "button", class: "corner", "aria-label": `Drop seed ${id}`, onclick: () => selection.remove(id) }, "×"))));
  }

  /** The value of a number field, or undefined when it is empty (the API's default). */
  function num(id) {
    const value = document.getElementById(id).value.trim();
    return value === "" ? undefined : Number(value);
  }
  function text(id) {
    const value = document.getElementById(id).value.trim();
    return value === "" ? undefined : value;
  }

  async function load() {
    const { datasets } = await api("/api/v1/datasets");
    none.hidden = datasets.length > 0;
    body.replaceChildren(...datasets.map((d) => el("tr", { dataset: { id: d.id } },
      el("td", {}, el("a", { href: `/datasets/${d.id}` }, d.name)),
      el("td", {}, d.prompt, d.class_prompt ? el("div", { class: "muted" }, d.class_prompt) : null),
      el("td", { class: "num" }, d.counts.instance || 0),
      el("td", { class: "num" }, d.counts.class || 0),
      el("td", { class: "num" }, d.counts.excluded || 0),
      el("td", {}, d.export_path ? el("code", {}, d.export_path) : el("span", { class: "muted" }, "not yet")),
      el("td", {}, fmt.date(d.updated_at)),
      el("td", {}, el("button", { type: "button", class: "danger", onclick: () => attempt(async () => {
        if (!confirm(`Delete dataset ${d.name}? Photos and exported files stay.`)) return;
        await api(`/api/v1/datasets/${d.id}`, { method: "DELETE" });
        toast(`deleted ${d.name}`);
        load();
      }) }, "Delete")))));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const seeds = [...selection.ids()];
      if (!seeds.length) throw new Error("select some photos first");
      const json = {
        name: text("ds-name"), prompt: text("ds-prompt"), class_prompt: text("ds-class-prompt"), seeds,
        trigger_word: text("ds-trigger"), class_word: text("ds-class-word"),
        crop_mode: document.getElementById("ds-crop-mode").value,
        k: num("ds-k"), min_score: num("ds-min-score"), max: num("ds-max"), mmr: num("ds-mmr"),
        sampler: document.getElementById("ds-sampler").value,
        space: text("ds-space"), class_count: num("ds-class-count"), class_label: text("ds-class-label"),
        tags: (text("ds-tags") || "").split(",").map((t) => t.trim()).filter(Boolean),
        hide_duplicates: document.getElementById("ds-hide-duplicates").checked,
      };
      // An empty min distance means "keep near-duplicates" (dedup null), not the default.
      const minDistance = num("ds-min-distance");
      if (minDistance === undefined) json.dedup = null;
      else json.min_distance = minDistance;
      createButton.disabled = true;
      try {
        const view = await api("/api/v1/datasets", { method: "POST", json });
        toast(`dataset ${view.dataset.name}: ${view.dataset.counts.instance || 0} images`);
        location.href = `/datasets/${view.dataset_id}`;
      } finally { createButton.disabled = false; }
    });
  });

  // Offer the known tags; the form works without them (typed names are checked on create).
  api("/api/v1/tags").then(({ tags }) => {
    document.getElementById("ds-tag-names").replaceChildren(
      ...(tags || []).map((t) => el("option", { value: t.name }, `${t.count} photos`)));
  }).catch(() => {});

  window.addEventListener("vitdex:selection", showSeeds);
  window.addEventListener("storage", showSeeds);
  showSeeds();
  attempt(load);
})();
