// Heads pages. /heads: every head and a form to train one (a job, followed live, then the
// new head opens). /heads/NAME: its report (per-class scores, confusion matrix), its label
// counts (each opening the library filtered by it), "Apply to library", and its least
// certain photos, paged, to correct by mouse or keyboard.
"use strict";
(function () {
  const { api, attempt, el, toast, followJob, progressBar, fmt } = window.vitdex;
  const $ = (id) => document.getElementById(id);
  const plural = (n, one, many = one + "s") => `${n.toLocaleString()} ${n === 1 ? one : many}`;
  const pct = (x) => (x == null ? "–" : `${(x * 100).toFixed(1)}%`);
  const headPath = (name) => `/api/v1/heads/${encodeURIComponent(name)}`;
  const libraryUrl = (head, label) => `/?head_label=${encodeURIComponent(`${head}:${label}`)}`;

  /** Run a job to its end with a progress bar in `box`; resolves to the final job. */
  async function runJob(job, box, what) {
    const [bar, set] = progressBar();
    bar.setAttribute("aria-label", `${what} progress`);
    const text = el("span", { class: "muted small" }, "queued");
    box.replaceChildren(bar, text);
    box.hidden = false;
    const done = await followJob(job.id, (j) => {
      set(j.progress);
      text.textContent = `${j.state}${j.total ? ` ${j.done.toLocaleString()} / ${j.total.toLocaleString()}` : ""}`;
    }, 400);
    if (done.state === "succeeded") {
      set(1);
      text.textContent = "done";
    } else {
      box.hidden = true;
      throw new Error(`${what} ${done.state}${done.error ? ": " + done.error : ""}`);
    }
    return done;
  }

  // ================================================================ /heads
  function listPage() {
    const body = document.querySelector("#head-table tbody");

    function row(h) {
      const classes = h.classes.length <= 4 ? h.classes.join(", ") : `${h.classes.slice(0, 4).join(", ")} … (${h.classes.length})`;
      return el("tr", { dataset: { head: h.name } },
        el("td", {}, el("a", { href: `/heads/${encodeURIComponent(h.name)}` }, h.name),
          h.model_matches ? null : [" ", el("span", { class: "pill warn", title: "The space now holds another model: retrain it" }, "stale")]),
        el("td", {}, h.space),
        el("td", { class: "heads-classes", title: h.classes.join(", ") }, classes),
        el("td", { class: "num" }, pct(h.report.accuracy)),
        el("td", { class: "num" }, h.labelled.toLocaleString()),
        el("td", {}, fmt.date(h.trained_at)),
        el("td", {}, h.applied_at ? fmt.date(h.applied_at) : el("span", { class: "muted" }, "never")));
    }

    async function loadHeads() {
      const { heads } = await api("/api/v1/heads");
      body.replaceChildren(...heads.map(row));
      $("no-heads").hidden = heads.length > 0;
      $("head-table").hidden = heads.length === 0;
    }
    async function loadTags() {
      const { tags } = await api("/api/v1/tags");
      $("head-tags").replaceChildren(...tags.map((t) => el("option", { value: t.name }, `${t.name} (${t.count.toLocaleString()})`)));
      $("head-tags").size = Math.max(3, Math.min(10, tags.length));
      $("head-no-tags").hidden = tags.length > 0;
    }
    async function loadSpaces() {
      const { spaces, default: chosen } = await api("/api/v1/spaces");
      $("head-space").replaceChildren(...spaces.map((s) => el("option", { value: s.name, selected: s.name === chosen },
        `${s.name} (${s.count.toLocaleString()} photos)`)));
    }
    function showSource() {
      const tags = $("head-from-tags").checked;
      $("head-tags-box").hidden = !tags;
      $("head-folder-box").hidden = tags;
    }

    async function train(event) {
      event.preventDefault();
      const name = $("head-name").value.trim();
      const body = { name };
      if ($("head-space").value) body.space = $("head-space").value;
      if ($("head-from-tags").checked) {
        body.from_tags = [...$("head-tags").selectedOptions].map((o) => o.value);
        if (!body.from_tags.length) throw new Error("Choose the tags to learn (one class each).");
      } else {
        body.from_folder = $("head-folder").value.trim();
        if (!body.from_folder) throw new Error("Give the folder whose subfolders are the classes.");
      }
      body.test_fraction = Number($("head-test-fraction").value || "0.2");
      body.seed = Number.parseInt($("head-seed").value || "0", 10);
      if ($("head-replace").checked) body.replace = true;
      const button = $("head-train-button");
      button.disabled = true;
      try {
        const { job } = await api("/api/v1/heads", { method: "POST", json: body });
        await runJob(job, $("head-progress"), "Training");
        toast(`Trained head “${name}”.`);
        location.href = `/heads/${encodeURIComponent(name)}`;
      } finally {
        button.disabled = false;
      }
    }

    $("head-from-tags").addEventListener("change", showSource);
    $("head-from-folder").addEventListener("change", showSource);
    $("head-train").addEventListener("submit", (event) => attempt(() => train(event)));
    showSource();
    attempt(loadHeads);
    attempt(loadTags);
    attempt(loadSpaces);
  }

  // ================================================================ /heads/NAME
  function headPage(root) {
    const NAME = root.dataset.name;
    const PAGE = 24;
    const KEYS_HIDDEN = "vitdex.heads.keysHidden";
    let head = null; // the head as the API last returned it
    let items = []; // the page's photos
    let total = 0;
    let offset = 0;
    let at = -1; // the photo in focus
    const undo = []; // corrections made here, last first: {image_id, before}
    let busy = false;

    function announce(message) {
      $("head-live").textContent = "";
      setTimeout(() => { $("head-live").textContent = message; }, 30);
    }

    // ------------------------------------------------------------ the report
    function showHead() {
      const r = head.report;
      $("head-source").textContent = head.source === "tags" ? `from tags: ${head.source_spec.tags.join(", ")}` : `from folder ${head.source_spec.folder}`;
      const facts = [`space ${head.space}`, `model ${fmt.name(head.model_id)}${head.model_revision ? "@" + head.model_revision.replace(/^sha256:/, "").slice(0, 8) : ""}`,
        `trained ${fmt.date(head.trained_at)}`, head.applied_at ? `applied ${fmt.date(head.applied_at)}` : "never applied",
        plural(head.labelled, "photo") + " labelled", plural(head.corrections, "correction")];
      $("head-facts").textContent = facts.join(" · ");
      $("head-stale").hidden = head.model_matches;
      $("head-stale").textContent = head.model_matches ? "" : `Space ${head.space} now holds another model than this head was trained on: retrain it (Train a head, with “Replace”) before applying it.`;
      $("head-apply").disabled = !head.model_matches;
      $("head-accuracy").textContent = pct(r.accuracy);
      $("head-split").textContent = `${plural(r.test_count, "photo")} held out, ${r.train_count.toLocaleString()} learnt from`;
      $("head-classes").tBodies[0].replaceChildren(...r.classes.map((c) => el("tr", {},
        el("th", { scope: "row" }, c.name),
        el("td", { class: "num" }, pct(c.precision)), el("td", { class: "num" }, pct(c.recall)),
        el("td", { class: "num" }, c.f1.toFixed(3)), el("td", { class: "num" }, c.support.toLocaleString()),
        el("td", { class: "num" }, (r.examples[c.name] ?? 0).toLocaleString()))));
      showConfusion(r);
      $("head-notes").replaceChildren(...r.notes.map((n) => el("li", {}, n)));
      showCounts();
      const labels = $("review-label");
      const chosen = labels.value;
      labels.replaceChildren(el("option", { value: "" }, "Any"), ...head.classes.map((c) => el("option", { value: c }, c)));
      labels.value = chosen;
    }

    function showConfusion(r) {
      const n = r.classes.length;
      const head_row = el("tr", {}, el("td", { class: "corner" }, el("span", { class: "small muted" }, "true ↓ · said →")),
        ...r.classes.map((c) => el("th", { scope: "col", title: `said ${c.name}` }, c.name)));
      const rows = r.confusion.map((counts, i) => {
        const sum = counts.reduce((a, b) => a + b, 0);
        return el("tr", {}, el("th", { scope: "row", title: `true ${r.classes[i].name}` }, r.classes[i].name),
          ...counts.map((count, j) => {
            const share = sum ? count / sum : 0;
            const kind = i === j ? "hit" : count ? "miss" : "none";
            return el("td", {
              class: `cell ${kind}${share >= 0.55 ? " strong" : ""}`,
              style: `--share: ${Math.round(share * 100)}%`,
              title: `${count} of ${sum} ${r.classes[i].name} photos said ${r.classes[j].name}`,
            }, String(count));
          }));
      });
      $("head-confusion").replaceChildren(el("thead", {}, head_row), el("tbody", {}, ...rows));
      $("head-confusion").style.setProperty("--n", String(n));
    }

    function showCounts() {
      const counts = head.label_counts;
      $("head-unapplied").hidden = head.labelled > 0;
      $("head-counts").replaceChildren(...head.classes.map((c) => el("li", {},
        el("a", { href: libraryUrl(head.name, c), title: `Open the library filtered by ${head.name}:${c}` },
          el("span", { class: "head-count-label" }, c),
          el("span", { class: "count" }, (counts[c] ?? 0).toLocaleString())))));
    }

    async function loadHead() {
      head = await api(headPath(NAME));
      showHead();
    }

    // ------------------------------------------------------------ the photos to check
    function view() {
      return { order: $("review-order").value, label: $("review-label").value, source: $("review-source").value };
    }
    async function loadItems(newOffset = offset, keepAt = 0) {
      offset = Math.max(0, newOffset);
      const v = view();
      const q = new URLSearchParams({ order: v.order, limit: String(PAGE), offset: String(offset) });
      if (v.label) q.set("label", v.label);
      if (v.source) q.set("source", v.source);
      const page = await api(`${headPath(NAME)}/labels?${q}`);
      items = page.items;
      total = page.total;
      $("review-range").textContent = items.length ? `${(offset + 1).toLocaleString()}–${(offset + items.length).toLocaleString()} of ${total.toLocaleString()}` : "";
      $("review-prev").disabled = offset === 0;
      $("review-next").disabled = offset + items.length >= total;
      $("review-empty").hidden = items.length > 0;
      $("review-empty").textContent = head && head.labelled === 0 ? "No labels yet: apply the head to the library first." : "No photos match.";
      $("review-keys").hidden = items.length === 0;
      renderItems();
      at = items.length ? Math.min(keepAt, items.length - 1) : -1;
      markFocus(false);
    }

    function itemNode(item, n) {
      const corrected = item.source === "corrected";
      const classes = ["head-item"];
      if (corrected) classes.push("corrected");
      if (item.label == null) classes.push("unlabelled");
      const name = fmt.name(item.path);
      const said = item.label == null
        ? el("p", { class: "head-said muted" }, "No label: predicted again at the next apply.")
        : el("p", { class: "head-said" },
          el("strong", { class: "head-label" }, item.label), " ",
          corrected ? el("span", { class: "pill head-corrected" }, "✓ corrected")
            : el("span", { class: "muted" }, `${pct(item.confidence)} sure`),
          !corrected && item.runner_up ? el("span", { class: "muted small head-runner" }, ` · else ${item.runner_up} (margin ${fmt.score(item.margin)})`) : null);
      return el("li", { class: classes.join(" "), dataset: { id: item.image_id, index: n } },
        el("a", { class: "head-photo", href: `/photos/${item.image_id}`, title: item.path, tabindex: "-1" },
          el("img", { src: `${item.thumbnail_url}?size=256`, alt: `Photo ${offset + n + 1}: ${name}`, loading: "lazy" })),
        said,
        el("div", { class: "head-choices", role: "group", "aria-label": `Class of ${name}` },
          ...head.classes.map((c, i) => el("button", {
            type: "button", "aria-pressed": String(item.label === c && corrected),
            class: item.label === c ? "current" : null,
            "aria-label": `${c} for ${name}`,
            onclick: () => { at = n; markFocus(false); attempt(() => correct(n, c)); },
          }, c, i < 9 ? [" ", el("kbd", {}, String(i + 1))] : null))));
    }
    function renderItems() {
      $("review-items").replaceChildren(...items.map(itemNode));
    }
    function markFocus(scroll) {
      document.querySelectorAll("#review-items .head-item").forEach((li) => {
        if (Number(li.dataset.index) === at) li.setAttribute("aria-current", "true"); else li.removeAttribute("aria-current");
      });
      if (scroll) document.querySelector('#review-items .head-item[aria-current="true"]')?.scrollIntoView({ block: "nearest" });
    }
    function replaceItem(n, updated) {
      items[n] = updated;
      const node = document.querySelector(`#review-items .head-item[data-index="${n}"]`);
      node?.replaceWith(itemNode(updated, n));
      markFocus(false);
    }

    /** Step the focus; past the page's end the next page opens. */
    async function step(delta) {
      if (!items.length) return;
      const next = at + delta;
      if (next >= 0 && next < items.length) { at = next; markFocus(true); return; }
      if (delta > 0 && offset + items.length < total) { await loadItems(offset + PAGE, 0); markFocus(true); return; }
      if (delta < 0 && offset > 0) { await loadItems(offset - PAGE, PAGE - 1); markFocus(true); return; }
      announce(delta > 0 ? "This is the last photo." : "This is the first photo.");
    }

    async function correct(n, label) {
      if (busy || !items[n]) return;
      busy = true;
      try {
        const before = items[n];
        const updated = await api(`${headPath(NAME)}/labels/${before.image_id}`, { method: "PUT", json: { label } });
        undo.push({ image_id: before.image_id, before });
        replaceItem(n, updated);
        announce(`${fmt.name(before.path)}: ${label}.`);
        if (n === at && at < items.length - 1) { at += 1; markFocus(true); }
        await loadHead();
      } finally {
        busy = false;
      }
    }
    async function undoLast() {
      if (busy) return;
      const last = undo.pop();
      if (!last) { announce("No correction to undo."); toast("No correction to undo on this page."); return; }
      busy = true;
      try {
        const url = `${headPath(NAME)}/labels/${last.image_id}`;
        const { before } = last;
        // A corrected photo gets its earlier correction back; a predicted one loses the
        // correction and the head predicts it again at once.
        const restored = before.source === "corrected"
          ? await api(url, { method: "PUT", json: { label: before.label } })
          : await api(url, { method: "DELETE" });
        const n = items.findIndex((i) => i.image_id === last.image_id);
        if (n >= 0) { replaceItem(n, restored); at = n; markFocus(true); }
        const message = `Undone: ${fmt.name(before.path)} ${restored.label ? "is " + restored.label + " again" : "has no correction"}.`;
        announce(message);
        toast(message);
        await loadHead();
      } finally {
        busy = false;
      }
    }

    // ------------------------------------------------------------ apply, delete
    async function apply() {
      const button = $("head-apply");
      button.disabled = true;
      try {
        const { job } = await api(`${headPath(NAME)}/apply`, { method: "POST" });
        const done = await runJob(job, $("head-apply-progress"), "Applying");
        toast(`Labelled ${plural(done.counts.labelled ?? head.labelled, "photo")}.`);
        await loadHead();
        await loadItems(0);
      } finally {
        button.disabled = !(head && head.model_matches);
      }
    }
    async function remove() {
      if (!confirm(`Delete the head “${NAME}” and every label it put on photos (corrections too)? The photos stay.`)) return;
      await api(headPath(NAME), { method: "DELETE" });
      location.href = "/heads";
    }

    // ------------------------------------------------------------ keys
    function onKey(event) {
      const key = event.key;
      if (event.shiftKey || busy || !head) return;
      if (/^[1-9]$/.test(key)) {
        event.preventDefault();
        const label = head.classes[Number(key) - 1];
        if (!label) { announce(`This head has ${plural(head.classes.length, "class", "classes")}.`); return; }
        if (at >= 0) attempt(() => correct(at, label));
        return;
      }
      const actions = { j: () => step(1), k: () => step(-1), u: undoLast };
      if (actions[key]) { event.preventDefault(); attempt(actions[key]); }
    }

    // ------------------------------------------------------------ wiring
    for (const id of ["review-order", "review-label", "review-source"]) $(id).addEventListener("change", () => attempt(() => loadItems(0)));
    $("review-prev").addEventListener("click", () => attempt(() => loadItems(offset - PAGE)));
    $("review-next").addEventListener("click", () => attempt(() => loadItems(offset + PAGE)));
    $("head-apply").addEventListener("click", () => attempt(apply));
    $("head-delete").addEventListener("click", () => attempt(remove));
    window.vitdex.reviewKeys({ list: "review-keys-list", toggle: "review-keys-toggle", storageKey: KEYS_HIDDEN, onKey });
    attempt(async () => { await loadHead(); await loadItems(0); });
  }

  const single = document.getElementById("head");
  if (single) headPage(single);
  else if (document.getElementById("heads-page")) listPage();
})();
