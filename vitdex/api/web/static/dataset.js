// Dataset page: every candidate (in or out, and why), include/exclude by click, captions
// (inline, and find/replace), trigger/class words, the bucket histogram, the crop each
// photo gets, export (a job with live progress) and "train" (a run).
"use strict";
(function () {
  const { api, attempt, el, toast, thumbUrl, fileUrl, followJob, progressBar, fmt } = window.vitdex;
  const root = document.getElementById("dataset-page");
  const datasetId = Number(root.dataset.datasetId);
  let view = null;

  const REASONS = {
    seed: "seed", neighbour: "neighbour", below_min_score: "below min score",
    near_duplicate: "near-duplicate", over_max: "over the maximum",
    excluded_by_hand: "excluded by hand", included_by_hand: "included by hand", class: "class image",
    diverse: "diverse pick", representative: "representative", not_sampled: "not sampled",
  };
  // Representative sampler: image id -> its cluster (number, size, pick), from the params.
  let clusterOf = new Map();
  function readClusters(params) {
    clusterOf = new Map();
    (params.clusters || []).forEach((c, number) => {
      for (const id of c.members || [c.image_id]) clusterOf.set(id, { number, size: c.size, pick: c.image_id });
    });
  }
  function reasonText(item) {
    let text = REASONS[item.reason] || String(item.reason).replaceAll("_", " ");
    if (item.duplicate_of) return `${text} of #${item.duplicate_of}`;
    const c = item.role === "instance" ? clusterOf.get(item.image_id) : undefined;
    if (c && item.reason === "representative") text += ` of cluster ${c.number + 1} (${c.size} photo${c.size > 1 ? "s" : ""})`;
    else if (c && item.reason === "not_sampled") text += ` (cluster ${c.number + 1}: #${c.pick})`;
    return text;
  }

  function showMeta(d) {
    document.getElementById("dataset-title").textContent = d.name;
    document.title = `${d.name} · vitdex`;
    const p = d.params || {};
    const rows = [
      ["Prompt", d.prompt], ["Class prompt", d.class_prompt || "none"],
      ["Trigger word", d.trigger_word || "none"], ["Class word", d.class_word || "none"],
      ["Crops", d.crop_mode === "buckets" ? "aspect buckets" : "square"], ["Space", d.space || "default"],
      ["Seeds", (p.seeds || []).map((s) => (s && typeof s === "object" ? (s.image_id != null ? `#${s.image_id}` : fmt.name(s.file)) : String(s))).join(", ")],
      ["Curation", [
        ...["sampler", "k", "min_score", "min_distance", "max", "mmr"].concat(p.min_distance == null ? ["dedup"] : []).filter((k) => p[k] != null).map((k) => `${k.replace("_", " ")} ${p[k]}`),
        p.tags && p.tags.length ? `tags ${p.tags.join(", ")}` : null,
        p.hide_duplicates ? "duplicates hidden" : null,
      ].filter(Boolean).join(" · ")],
      ["Exported to", d.export_path || "not yet"],
    ];
    document.getElementById("dataset-meta").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v ?? ""))]));
  }

  /** The photo with the square its export crops drawn over it (scaled to the image). */
  function frame(item) {
    const c = item.crop;
    const w = (c && c.width) || item.width || 1;
    const h = (c && c.height) || item.height || 1;
    const box = el("div", { class: "frame", style: `aspect-ratio: ${w} / ${h}` },
      el("img", { src: thumbUrl(item.image_id), alt: fmt.name(item.path), loading: "lazy" }));
    if (c && Array.isArray(c.box) && c.width && c.height) {
      const [l, t, r, b] = c.box;
      const pct = (x, of) => `${(100 * x / of).toFixed(3)}%`;
      box.append(el("div", {
        class: "crop-box", title: `crop (${c.method || "centre"}): ${r - l}×${b - t} px`,
        style: `left:${pct(l, w)};top:${pct(t, h)};width:${pct(r - l, w)};height:${pct(b - t, h)}`,
      }));
    }
    return box;
  }

  function itemCard(item) {
    const state = item.included ? "included" : "excluded";
    const toggle = el("button", {
      type: "button", class: `item-photo ${state}`, "aria-pressed": String(item.included),
      "aria-label": `${fmt.name(item.path)}: ${state} (${reasonText(item)}). Press to ${item.included ? "exclude" : "include"}.`,
      dataset: { imageId: item.image_id },
      onclick: () => attempt(() => setIncluded(item, !item.included)),
      onkeydown: moveFocus,
    }, frame(item));
    const caption = captionEditor(item);
    return el("div", { class: `item ${state}`, role: "listitem", dataset: { imageId: item.image_id, role: item.role } },
      toggle,
      el("div", { class: "item-meta" },
        el("span", { class: `pill ${item.included ? "ok" : "error"}`, "data-state": state }, item.included ? "in" : "out"),
        " ", el("span", { class: "reason" }, reasonText(item)),
        item.score != null ? el("span", { class: "score" }, fmt.score(item.score)) : null),
      el("div", { class: "item-file" },
        el("a", { class: "muted small", href: fileUrl(item.image_id), target: "_blank", rel: "noopener" }, `#${item.image_id} ${fmt.name(item.path)}`),
        caption.marker),
      caption.row);
  }

  /** Arrow keys move between the photos of a grid; Home/End to its ends. */
  function moveFocus(event) {
    const keys = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    const all = [...event.currentTarget.closest(".grid").querySelectorAll(".item-photo")];
    const at = all.indexOf(event.currentTarget);
    let next = null;
    if (event.key in keys) {
      // Up and down jump a row: as many tiles as fit across.
      const across = Math.max(1, Math.round(event.currentTarget.closest(".grid").clientWidth / event.currentTarget.closest(".item").offsetWidth));
      const step = event.key.startsWith("ArrowU") || event.key.startsWith("ArrowD") ? across : 1;
      next = all[at + keys[event.key] * step];
    } else if (event.key === "Home") next = all[0];
    else if (event.key === "End") next = all[all.length - 1];
    if (next) { event.preventDefault(); next.focus(); }
  }

  async function setIncluded(item, include) {
    const path = `/api/v1/datasets/${datasetId}/${include ? "include" : "exclude"}`;
    const changed = await api(path, { method: "POST", json: { image_ids: [item.image_id], role: item.role } });
    toast(`${fmt.name(item.path)} ${include ? "included" : "excluded"}`);
    show(changed, item.image_id);
  }

  /** The effective caption, editable: Enter saves, Esc undoes, × goes back to the default. */
  function captionEditor(item) {
    const name = fmt.name(item.path);
    const isDefault = item.caption_source === "default";
    const marker = el("span", { class: `pill source${isDefault ? "" : " ok"}`, title: isDefault ? "the dataset's prompt" : "set by hand" },
      isDefault ? "default" : "own");
    const input = el("input", {
      class: `caption${isDefault ? " default" : ""}`, value: item.caption || "", maxlength: 2000,
      "aria-label": `Caption of ${name}`, title: "Enter saves, Esc undoes",
      placeholder: item.role === "class" ? "no class prompt" : "",
      oninput: () => input.classList.toggle("dirty", input.value !== (item.caption || "")),
      onkeydown: (event) => {
        if (event.key === "Enter") { event.preventDefault(); attempt(() => saveCaption(item, input.value.trim() || null)); }
        else if (event.key === "Escape") { event.preventDefault(); input.value = item.caption || ""; input.classList.remove("dirty"); }
      },
    });
    const clear = el("button", {
      type: "button", class: "clear", title: "Back to the default caption", "aria-label": `Clear the caption of ${name}`,
      disabled: isDefault || undefined,
      onclick: () => attempt(() => saveCaption(item, null)),
    }, "×");
    return { marker, row: el("div", { class: "caption-row" }, input, clear) };
  }

  async function saveCaption(item, value) {
    if (value !== null && value === item.caption && item.caption_source === "item") return;
    const saved = await api(`/api/v1/datasets/${datasetId}/items/${item.image_id}`, {
      method: "PATCH", json: { caption: value, role: item.role },
    });
    Object.assign(item, saved);
    // Redraw the card in place: its marker, class and clear button follow the source.
    const card = root.querySelector(`.item[data-image-id="${item.image_id}"][data-role="${item.role}"]`);
    const fresh = itemCard(item);
    card?.replaceWith(fresh);
    fresh.querySelector("input.caption")?.classList.add("saved");
    toast(value === null ? `caption of ${fmt.name(item.path)} back to the default` : `caption of ${fmt.name(item.path)} saved`);
  }

  // Trigger and class words, crop mode and prompts.
  function fillSettings(d) {
    document.getElementById("set-trigger").value = d.trigger_word || "";
    document.getElementById("set-class").value = d.class_word || "";
    document.getElementById("set-crop-mode").value = d.crop_mode || "square";
    document.getElementById("set-prompt").value = d.prompt || "";
    document.getElementById("set-class-prompt").value = d.class_prompt || "";
  }
  document.getElementById("settings-form").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const d = view.dataset;
      const value = (id) => document.getElementById(id).value.trim();
      const json = {};
      // Only what changed: an untouched prompt made from the words follows new words.
      if (value("set-trigger") !== (d.trigger_word || "")) json.trigger_word = value("set-trigger");
      if (value("set-class") !== (d.class_word || "")) json.class_word = value("set-class");
      if (value("set-crop-mode") !== d.crop_mode) json.crop_mode = value("set-crop-mode");
      if (value("set-prompt") !== d.prompt) json.prompt = value("set-prompt");
      if (value("set-class-prompt") !== (d.class_prompt || "")) json.class_prompt = value("set-class-prompt");
      if (!Object.keys(json).length) { toast("nothing changed"); return; }
      await api(`/api/v1/datasets/${datasetId}`, { method: "PATCH", json });
      toast("dataset saved");
      await load();
    });
  });

  // Find and replace: a dry run first (count and examples), then apply the same thing.
  const rpResult = document.getElementById("rp-result");
  const rpApply = document.getElementById("rp-apply");
  let previewed = null;
  function replaceBody(dryRun) {
    return {
      find: document.getElementById("rp-find").value, replace: document.getElementById("rp-replace").value,
      regex: document.getElementById("rp-regex").checked, role: document.getElementById("rp-role").value || null,
      dry_run: dryRun,
    };
  }
  function showReplace(result) {
    const verb = result.dry_run ? "would change" : "changed";
    const list = el("ul", {}, ...result.examples.map((c) => el("li", {},
      `#${c.image_id} `, el("del", {}, c.before), " → ", el("ins", {}, c.after))));
    rpResult.replaceChildren(el("div", { class: result.dry_run ? "" : "ok", id: "rp-count" },
      `${verb} ${result.changed} of ${result.scanned} captions`
      + (result.examples.length < result.changed ? ` (first ${result.examples.length} shown)` : "")), list);
  }
  document.getElementById("replace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const body = replaceBody(true);
      const result = await api(`/api/v1/datasets/${datasetId}/captions/replace`, { method: "POST", json: body });
      showReplace(result);
      previewed = result.changed ? JSON.stringify(body) : null;
      rpApply.disabled = !previewed;
    });
  });
  // Editing the form after a preview asks for a new one before applying.
  for (const id of ["rp-find", "rp-replace", "rp-regex", "rp-role"]) {
    document.getElementById(id).addEventListener("input", () => { previewed = null; rpApply.disabled = true; });
  }
  rpApply.addEventListener("click", () => attempt(async () => {
    if (!previewed) return;
    rpApply.disabled = true;
    const result = await api(`/api/v1/datasets/${datasetId}/captions/replace`, { method: "POST", json: { ...JSON.parse(previewed), dry_run: false } });
    previewed = null;
    showReplace(result);
    toast(`${result.changed} captions changed`);
    await load();
  }));

  // Bucket histogram: one row per bucket, a shape of its aspect, its size and a bar.
  const bkResolution = document.getElementById("bk-resolution");
  function showBuckets(buckets, mode) {
    document.getElementById("buckets-mode").textContent = mode === "buckets" ? "in use" : "crop mode: square";
    const chart = document.getElementById("buckets-chart");
    if (!buckets.bins.length) {
      chart.replaceChildren(el("p", { class: "muted" }, "No included instance images of known size."));
      return;
    }
    const most = Math.max(...buckets.bins.map((b) => b.count));
    const side = Math.max(...buckets.bins.flatMap((b) => [b.width, b.height]));
    chart.replaceChildren(...buckets.bins.map((b) => el("div", {
      class: "row-item", role: "listitem", "aria-label": `${b.width}×${b.height}: ${b.count} images`,
      dataset: { width: b.width, height: b.height, count: b.count },
    },
      el("div", { class: "shape-cell" }, el("div", { class: "shape", style: `width:${Math.round(28 * b.width / side)}px;height:${Math.round(28 * b.height / side)}px` })),
      el("span", { class: "size" }, `${b.width}×${b.height}`),
      el("div", { class: "track" }, el("div", { class: "bar", style: `width:${(100 * b.count / most).toFixed(1)}%` })),
      el("span", { class: "count" }, String(b.count)))));
  }
  bkResolution.addEventListener("change", () => attempt(load));

  function show(data, focusId) {
    view = data;
    readClusters(data.dataset.params || {});
    showMeta(data.dataset);
    fillSettings(data.dataset);
    // A change answers with the histogram at 512; another resolution is fetched again.
    if (data.buckets.resolution === Number(bkResolution.value)) showBuckets(data.buckets, data.dataset.crop_mode);
    else attempt(load);
    const counts = data.dataset.counts;
    for (const role of ["instance", "class"]) {
      const items = data.items.filter((i) => i.role === role);
      document.getElementById(`${role}-items`).replaceChildren(...items.map(itemCard));
      document.getElementById(`${role}-count`).textContent =
        `${counts[role] || 0} in · ${items.filter((i) => !i.included).length} out`;
    }
    document.getElementById("class-section").hidden = !data.items.some((i) => i.role === "class");
    if (focusId != null) root.querySelector(`.item-photo[data-image-id="${focusId}"]`)?.focus();
  }

  const load = async () => show(await api(`/api/v1/datasets/${datasetId}?resolution=${Number(bkResolution.value)}`));

  // Export: a job; its bar follows it to the end, then the crops appear on the photos.
  const exportStatus = document.getElementById("export-status");
  document.getElementById("export-form").addEventListener("submit", (event) => {
    event.preventDefault();
    attempt(async () => {
      const path = document.getElementById("ex-path").value.trim();
      const json = {
        resolution: Number(document.getElementById("ex-resolution").value),
        detect_faces: document.getElementById("ex-faces").checked,
      };
      if (path) json.path = path;
      const button = document.getElementById("export-button");
      button.disabled = true;
      try {
        const { job } = await api(`/api/v1/datasets/${datasetId}/export`, { method: "POST", json });
        const [bar, set] = progressBar();
        const text = el("span", { class: "muted" });
        exportStatus.replaceChildren(bar, text);
        const end = await followJob(job.id, (j) => {
          set(j.progress);
          text.textContent = `${j.state} ${j.done}${j.total != null ? "/" + j.total : ""}`;
        });
        if (end.state === "succeeded") {
          set(1);
          const c = end.counts || {};
          text.textContent = `exported ${c.instance ?? end.done} images${c.class ? ` + ${c.class} class` : ""} to ${c.path || ""}`
            + (c.kohya && c.kohya.path ? ` (kohya folders in ${c.kohya.path})` : "");
          text.className = "ok";
          await load();
        } else {
          text.textContent = `${end.state}${end.error ? ": " + end.error : ""}`;
          text.className = "error";
        }
      } finally { button.disabled = false; }
    });
  });

  // Train: a run on this dataset; its page follows it.
  document.getElementById("train-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const num = (id) => { const v = document.getElementById(id).value.trim(); return v === "" ? undefined : Number(v); };
    const str = (id) => document.getElementById(id).value.trim() || undefined;
    attempt(async () => {
      const lora = num("tr-lora");
      const checked = (id) => document.getElementById(id).checked || undefined;
      const prompts = document.getElementById("tr-sample-prompts").value.split("\n").map((p) => p.trim()).filter(Boolean);
      const options = {
        device: str("tr-device"), mixed_precision: str("tr-precision"), lora_rank: lora ? lora : undefined,
        preset: str("tr-preset"), optimizer: str("tr-optimizer"), buckets: checked("tr-buckets"),
        ema: checked("tr-ema"), caption_dropout: num("tr-caption-dropout"), shuffle_tags: checked("tr-shuffle"),
        sample_every: num("tr-sample-every"), sample_prompts: prompts.length ? prompts : undefined,
        validation_images: num("tr-validation-images"), validation_every: num("tr-validation-every"),
      };
      const json = {
        dataset: String(datasetId), base_model: str("tr-base"),
        steps: num("tr-steps"), text_encoder_steps: num("tr-te-steps"), resolution: num("tr-resolution"),
        learning_rate: num("tr-lr"), save_every: num("tr-save-every"), seed: num("tr-seed"),
        force: document.getElementById("tr-force").checked || undefined,
        options: Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
      };
      const run = await api("/api/v1/training-runs", { method: "POST", json });
      location.href = `/runs/${run.id}`;
    });
  });

  attempt(load);
})();
