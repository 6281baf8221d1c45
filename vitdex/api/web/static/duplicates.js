// Duplicates page: start a scan (a job, followed live), then review the groups it found one
// at a time, by mouse or keyboard. The API pages the groups; this page holds one page of
// them, so thousands of groups never load at once.
"use strict";
(function () {
  const { api, attempt, el, toast, followJob, progressBar, thumbUrl, fmt } = window.vitdex;
  const $ = (id) => document.getElementById(id);
  const STATUSES = ["open", "kept", "not_duplicates", "all"];
  const KEYS_HIDDEN = "vitdex.duplicates.keysHidden";

  const params = new URLSearchParams(location.search);
  // Groups per page: 50 unless the address asks for another size (1..200, the API's range).
  const PAGE = Math.max(1, Math.min(200, Number.parseInt(params.get("limit") || "50", 10) || 50));
  const view = {
    status: STATUSES.includes(params.get("status")) ? params.get("status") : "open",
    kind: ["exact", "near"].includes(params.get("kind")) ? params.get("kind") : "",
    offset: Math.max(0, Number.parseInt(params.get("offset") || "0", 10) || 0),
  };
  let groups = []; // the page's groups, as the API last returned each
  let total = 0; // groups matching the view when the page was loaded
  let at = -1; // index of the group in focus
  let busy = false; // a decision is on its way: keys and decision buttons wait for it
  let queue = Promise.resolve(); // the last change sent: changes run one after another

  /** Run `change` after the ones before it; `busy` while any runs. */
  function serial(change) {
    const run = queue.then(async () => {
      busy = true;
      try { return await change(); } finally { busy = false; }
    });
    queue = run.catch(() => undefined);
    return run;
  }

  // ------------------------------------------------------------------ words
  const plural = (n, one, many = one + "s") => `${n.toLocaleString()} ${n === 1 ? one : many}`;
  function megapixels(m) {
    if (!m.width || !m.height) return "size unknown";
    const mp = (m.width * m.height) / 1e6;
    return `${m.width} × ${m.height} (${mp >= 10 ? mp.toFixed(0) : mp.toFixed(mp < 1 ? 2 : 1)} MP)`;
  }
  /** The end of a long path: the file and its folder, the whole path in a tooltip. */
  function shortPath(path) {
    const parts = (path || "").split("/").filter(Boolean);
    return parts.length <= 2 ? path : "…/" + parts.slice(-2).join("/");
  }
  const memberName = (g, id) => {
    const m = g.members.find((x) => x.image_id === id);
    return m ? fmt.name(m.path) : `photo ${id}`;
  };
  function decision(g) {
    if (g.status === "kept") return `Kept ${memberName(g, g.keeper_id)}`;
    if (g.status === "not_duplicates") return "Not duplicates";
    return "Open";
  }
  function announce(message) {
    // Clear first so the same words said twice are announced twice.
    $("dup-live").textContent = "";
    setTimeout(() => { $("dup-live").textContent = message; }, 30);
  }

  // ------------------------------------------------------------------ the URL keeps the view
  function remember() {
    const q = new URLSearchParams();
    if (view.status !== "open") q.set("status", view.status);
    if (view.kind) q.set("kind", view.kind);
    if (view.offset) q.set("offset", String(view.offset));
    if (PAGE !== 50) q.set("limit", String(PAGE));
    const qs = q.toString();
    history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
  }
  function query(limit, offset) {
    const q = new URLSearchParams({ status: view.status, limit: String(limit), offset: String(offset) });
    if (view.kind) q.set("kind", view.kind);
    return q;
  }

  // ------------------------------------------------------------------ counts and paging
  function showCounts(counts) {
    $("count-open").textContent = counts.open.toLocaleString();
    $("count-kept").textContent = counts.kept.toLocaleString();
    $("count-not").textContent = counts.not_duplicates.toLocaleString();
    $("count-marked").textContent = counts.marked_images.toLocaleString();
  }
  /** Groups of this page that no longer match the view (decided while on the open tab…). */
  function leftTheView() {
    if (view.status === "all") return 0;
    return groups.filter((g) => g.status !== view.status).length;
  }
  function showPaging() {
    const first = groups.length ? view.offset + 1 : 0;
    $("dup-range").textContent = groups.length
      ? `Groups ${first.toLocaleString()}–${(view.offset + groups.length).toLocaleString()} of ${total.toLocaleString()}`
      : "";
    $("dup-prev-page").disabled = view.offset === 0;
    $("dup-next-page").disabled = view.offset + groups.length >= total;
  }
  /** Refresh the counts (and the view's total) without reloading the page's groups. */
  async function refreshCounts() {
    const page = await api(`/api/v1/duplicates?${query(1, 0)}`);
    showCounts(page.counts);
    // Decided groups stay on screen until the page reloads: count them in.
    total = page.total + leftTheView();
    showPaging();
    return page.counts;
  }

  // ------------------------------------------------------------------ loading a page
  async function load(offset = view.offset, focusId = null) {
    view.offset = Math.max(0, offset);
    remember();
    let page = await api(`/api/v1/duplicates?${query(PAGE, view.offset)}`);
    if (!page.groups.length && view.offset > 0) {
      // Past the end (groups were decided elsewhere, or a bookmarked offset): the first page.
      view.offset = 0;
      remember();
      page = await api(`/api/v1/duplicates?${query(PAGE, 0)}`);
    }
    groups = page.groups;
    total = page.total;
    showCounts(page.counts);
    showPaging();
    renderList();
    const found = focusId == null ? -1 : groups.findIndex((g) => g.id === focusId);
    if (groups.length) {
      show(found >= 0 ? found : 0, false);
    } else {
      at = -1;
      showEmpty(page.counts);
    }
  }

  function showEmpty(counts) {
    $("dup-review").hidden = true;
    $("dup-keys").hidden = true;
    const empty = $("dup-empty");
    empty.hidden = false;
    const any = counts.open + counts.kept + counts.not_duplicates;
    if (!any) empty.textContent = "No duplicate groups yet: run a scan.";
    else if (view.status === "open" && !view.kind) empty.textContent = `All reviewed: no open groups left (${plural(counts.kept, "group")} kept, ${counts.not_duplicates.toLocaleString()} not duplicates).`;
    else if (view.status === "open") empty.textContent = `All reviewed: no open ${view.kind} groups left.`;
    else empty.textContent = "No groups with this status.";
  }

  // ------------------------------------------------------------------ the page's list
  const stateWord = (g) => (g.status === "open" ? "open" : g.status === "kept" ? "kept" : "not duplicates");
  function renderList() {
    $("dup-list").replaceChildren(...groups.map((g, i) => el("li", {},
      el("button", {
        type: "button", class: "dup-item", dataset: { index: i, id: g.id },
        "aria-label": `Group ${g.id}, ${g.kind}, ${plural(g.members.length, "photo")}, ${decision(g)}`,
        onclick: () => show(i, true),
      },
      el("span", { class: "dup-item-thumbs" },
        ...g.members.slice(0, 2).map((m) => el("img", { src: thumbUrl(m.image_id), alt: "", loading: "lazy" }))),
      el("span", { class: "dup-item-text" },
        el("strong", {}, `#${g.id}`), " ",
        el("span", { class: "muted" }, `${g.kind} · ${g.members.length}`),
        el("span", { class: `dup-item-state state-${g.status}` }, stateWord(g)))))));
  }
  function markList() {
    document.querySelectorAll("#dup-list .dup-item").forEach((b) => {
      const i = Number(b.dataset.index);
      const g = groups[i];
      if (i === at) b.setAttribute("aria-current", "true"); else b.removeAttribute("aria-current");
      const state = b.querySelector(".dup-item-state");
      state.className = `dup-item-state state-${g.status}`;
      state.textContent = stateWord(g);
      b.setAttribute("aria-label", `Group ${g.id}, ${g.kind}, ${plural(g.members.length, "photo")}, ${decision(g)}`);
    });
    const current = document.querySelector('#dup-list .dup-item[aria-current="true"]');
    current?.scrollIntoView({ block: "nearest" });
  }

  // ------------------------------------------------------------------ the group in focus
  function fact(term, value, title) {
    return [el("dt", {}, term), el("dd", title ? { title } : {}, value)];
  }
  function member(g, m, n) {
    const decided = g.status !== "open";
    const classes = ["dup-member"];
    if (m.suggested) classes.push("suggested");
    if (m.kept) classes.push("kept");
    if (m.marked) classes.push("marked");
    const badges = [el("span", { class: "dup-n", "aria-hidden": "true" }, String(n))];
    if (m.suggested) badges.push(el("span", { class: "pill dup-suggested", title: g.reason || "" }, "Suggested"));
    const name = fmt.name(m.path);
    return el("li", { class: classes.join(" ") },
      el("a", { class: "dup-photo", href: `/photos/${m.image_id}`, title: `Open ${m.path}` },
        el("img", { src: `${thumbUrl(m.image_id)}?size=512`, alt: `Photo ${n}: ${name}` })),
      el("div", { class: "dup-badges" }, ...badges),
      m.suggested && g.reason ? el("p", { class: "dup-reason small" }, `Why: ${g.reason}.`) : null,
      el("dl", { class: "meta dup-meta" },
        fact("Size", megapixels(m)),
        fact("File", [fmt.bytes(m.size), m.format ? ` · ${m.format}` : ""].join("")),
        fact("Taken", m.taken_at ? fmt.date(m.taken_at) : "unknown"),
        fact("Path", shortPath(m.path), m.path),
        fact("Similarity", m.suggested ? "suggested keeper" : m.score == null ? "–" : fmt.score(m.score), m.suggested ? "" : "cosine similarity to the suggested keeper")),
      decided ? el("p", { class: `dup-verdict ${m.kept ? "kept" : m.marked ? "marked" : "not"}` },
        m.kept ? "✓ Kept" : m.marked ? "Marked as a duplicate" : "Not a duplicate")
        : el("button", {
          type: "button", "aria-keyshortcuts": n <= 9 ? String(n) : null,
          "aria-label": `Keep photo ${n}, ${name}`, onclick: () => keep(m.image_id),
        }, "Keep this", n <= 9 ? [" ", el("kbd", {}, String(n))] : null));
  }

  /** Put group `i` of the page in focus; `moveFocus` puts the keyboard focus on it too. */
  function show(i, moveFocus) {
    if (!groups.length) return;
    at = Math.max(0, Math.min(groups.length - 1, i));
    const g = groups[at];
    $("dup-empty").hidden = true;
    $("dup-review").hidden = false;
    $("dup-keys").hidden = false;
    $("dup-title").textContent = `Group #${g.id} · ${plural(g.members.length, "photo")}`;
    const state = $("dup-state");
    state.textContent = decision(g);
    state.className = `pill dup-state state-${g.status}`;
    const facts = [g.kind === "exact" ? "Exact copies (same bytes)" : `Near copies in space ${g.space}`];
    if (g.kind === "near" && g.threshold != null) facts.push(`threshold ${fmt.score(g.threshold)}`);
    if (g.kind === "near" && g.min_score != null) facts.push(`lowest similarity ${fmt.score(g.min_score)}`);
    facts.push(`found ${fmt.date(g.created_at)}`);
    if (g.decided_at) facts.push(`decided ${fmt.date(g.decided_at)}`);
    facts.push(`${at + 1} of ${groups.length} on this page`);
    $("dup-facts").textContent = facts.join(" · ");
    const open = g.status === "open";
    $("dup-keep-suggested").hidden = !open || g.suggested_keeper_id == null;
    $("dup-not").hidden = !open;
    $("dup-undo").hidden = open;
    $("dup-prev").disabled = at === 0 && view.offset === 0;
    $("dup-next").disabled = at === groups.length - 1 && view.offset + groups.length >= total;
    $("dup-members").className = `dup-members ${open ? "open" : "decided"}`;
    $("dup-members").replaceChildren(...g.members.map((m, n) => member(g, m, n + 1)));
    markList();
    if (moveFocus) $("dup-title").focus({ preventScroll: true });
  }

  /** The next (or previous) group, across page boundaries. */
  async function step(delta) {
    if (!groups.length) return;
    const next = at + delta;
    if (next >= 0 && next < groups.length) { show(next, true); announceGroup(); return; }
    if (delta > 0 && view.offset + groups.length < total) {
      await load(view.offset + PAGE - leftTheView());
      show(0, true);
    } else if (delta < 0 && view.offset > 0) {
      await load(Math.max(0, view.offset - PAGE));
      show(groups.length - 1, true);
    } else {
      announce(delta > 0 ? "This is the last group." : "This is the first group.");
      return;
    }
    announceGroup();
  }
  function announceGroup() {
    const g = groups[at];
    if (g) announce(`Group ${g.id}: ${plural(g.members.length, "photo")}, ${decision(g)}.`);
  }

  // ------------------------------------------------------------------ decisions
  /** A toast with an Undo button: the decision it undoes stays a click away. */
  function undoToast(message, groupId) {
    const box = $("toasts");
    const item = el("div", { class: "toast dup-toast" }, el("span", {}, message), " ",
      el("button", { type: "button", class: "link", onclick: () => { item.remove(); attempt(() => undo(groupId)); } }, "Undo"));
    box.appendChild(item);
    setTimeout(() => item.remove(), 8000);
  }

  function replaceGroup(updated) {
    const i = groups.findIndex((g) => g.id === updated.id);
    if (i >= 0) groups[i] = updated;
    return i;
  }

  /** After a decision: the next open group on the page, else the page reloaded (true). */
  async function advance() {
    const after = groups.findIndex((g, i) => i > at && g.status === "open");
    const before = groups.findIndex((g) => g.status === "open");
    if (after >= 0) { show(after, true); return false; }
    if (before >= 0) { show(before, true); return false; }
    if (view.status !== "open") { show(at, true); return false; }
    // Every group of this page is decided and has left the open list: the same offset
    // now holds the next ones.
    await load(view.offset);
    if (groups.length) $("dup-title").focus({ preventScroll: true });
    return true;
  }

  async function decide(body, says) {
    // A second key press or click while a decision is on its way is dropped, not queued:
    // it was meant for the group on screen, which is about to change.
    if (busy) return;
    const g = groups[at];
    if (!g) return;
    if (g.status !== "open") {
      announce("This group is decided already: press u to undo first.");
      toast("This group is decided already: undo it first (u).", true);
      return;
    }
    await serial(async () => {
      const updated = await api(`/api/v1/duplicates/${g.id}/resolve`, { method: "POST", json: body });
      replaceGroup(updated);
      const message = `Group #${g.id}: ${says(updated)}.`;
      announce(message);
      undoToast(message, g.id);
      // The counts come last, so once they show the decision the page is ready for the next.
      if (!(await advance())) await refreshCounts();
    });
  }
  function keep(imageId) {
    return attempt(() => decide({ action: "keep", keeper_id: imageId },
      (u) => `kept ${memberName(u, imageId)}, ${plural(u.members.length - 1, "photo")} marked`));
  }
  function keepNth(n) {
    const g = groups[at];
    if (!g) return;
    const m = g.members[n - 1];
    if (!m) { announce(`This group has only ${plural(g.members.length, "photo")}.`); return; }
    keep(m.image_id);
  }
  function keepSuggested() {
    const g = groups[at];
    if (g && g.suggested_keeper_id != null) keep(g.suggested_keeper_id);
  }
  function notDuplicates() {
    return attempt(() => decide({ action: "not_duplicates" }, () => "not duplicates"));
  }

  /** Reopen a decided group; waits for a decision still on its way (the toast's Undo). */
  function undo(groupId) {
    return serial(async () => {
      const updated = await api(`/api/v1/duplicates/${groupId}/undo`, { method: "POST" });
      const i = replaceGroup(updated);
      const message = `Group #${groupId}: decision undone, open again.`;
      announce(message);
      toast(message);
      if (i < 0 && (view.status === "open" || view.status === "all")) {
        await load(view.offset, groupId);
        return;
      }
      await refreshCounts();
      // The group shows its new state last: once it does, the page takes the next key.
      if (i >= 0) show(i, true);
    });
  }
  function undoCurrent() {
    const g = groups[at];
    if (!g) return;
    if (g.status === "open") { announce("This group is still open: nothing to undo."); return; }
    attempt(() => undo(g.id));
  }

  // ------------------------------------------------------------------ keys
  function onKey(event) {
    const key = event.key;
    if (event.shiftKey || busy || $("dup-review").hidden) return;
    const actions = {
      j: () => attempt(() => step(1)), ArrowRight: () => attempt(() => step(1)),
      k: () => attempt(() => step(-1)), ArrowLeft: () => attempt(() => step(-1)),
      s: keepSuggested, n: notDuplicates, u: undoCurrent,
    };
    if (/^[1-9]$/.test(key)) { event.preventDefault(); keepNth(Number(key)); return; }
    const action = actions[key];
    if (action) { event.preventDefault(); action(); }
  }

  // ------------------------------------------------------------------ scan
  async function loadSpaces() {
    const { spaces, default: chosen } = await api("/api/v1/spaces");
    const select = $("dup-space");
    select.replaceChildren(...spaces.map((s) => el("option", { value: s.name, selected: s.name === chosen },
      `${s.name} (${s.count.toLocaleString()} photos)`)));
    if (!spaces.length) {
      select.append(el("option", { value: "" }, "no spaces yet"));
      select.disabled = true;
      $("dup-near").checked = false;
      $("dup-near").disabled = true;
    }
  }
  function showDefaultThreshold() {
    const value = $("dup").dataset.threshold;
    if (!value) return;
    $("dup-threshold").placeholder = value;
    $("dup-threshold").value = value;
    $("dup-threshold-default").textContent = value;
  }

  async function scan(event) {
    event.preventDefault();
    const exact = $("dup-exact").checked;
    const near = $("dup-near").checked;
    if (!exact && !near) throw new Error("Choose exact copies, near copies or both.");
    const body = { exact, near };
    if (near && $("dup-space").value) body.space = $("dup-space").value;
    const raw = $("dup-threshold").value.trim();
    if (near && raw) {
      const threshold = Number(raw);
      if (!(threshold > 0 && threshold <= 1)) throw new Error("The threshold is a similarity between 0 and 1.");
      body.threshold = threshold;
    }
    const filter = {};
    if ($("dup-folder").value.trim()) filter.folder = $("dup-folder").value.trim();
    if ($("dup-tag").value.trim()) filter.tag = [$("dup-tag").value.trim()];
    if (Object.keys(filter).length) body.filter = filter;
    const button = $("dup-scan-button");
    button.disabled = true;
    try {
      const { job } = await api("/api/v1/duplicates/scan", { method: "POST", json: body });
      const [bar, set] = progressBar();
      bar.setAttribute("aria-label", "Scan progress");
      const text = el("span", { class: "muted" }, "queued");
      $("dup-progress").replaceChildren(bar, text);
      $("dup-progress").hidden = false;
      const done = await followJob(job.id, (j) => {
        set(j.progress);
        text.textContent = `${j.state} ${j.done.toLocaleString()}${j.total != null ? " / " + j.total.toLocaleString() : ""}`;
      }, 500);
      if (done.state === "succeeded") {
        set(1);
        const { groups: found, new_groups: fresh } = done.counts || {};
        const said = found != null ? `${plural(found, "group")} found${fresh != null ? `, ${fresh.toLocaleString()} new` : ""}` : "";
        text.textContent = said ? `done: ${said}` : "done";
        toast(said ? `Scan done: ${said}.` : "Scan done.");
      } else {
        $("dup-progress").hidden = true;
        toast(`Scan ${done.state}${done.error ? ": " + done.error : ""}`, true);
      }
      await load(0);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ wiring
  function showView() {
    document.querySelectorAll("#dup-status button").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.status === view.status)));
    $("dup-kind").value = view.kind;
  }
  document.querySelectorAll("#dup-status button").forEach((b) => b.addEventListener("click", () => {
    view.status = b.dataset.status;
    showView();
    attempt(() => load(0));
  }));
  $("dup-kind").addEventListener("change", () => { view.kind = $("dup-kind").value; attempt(() => load(0)); });
  $("dup-prev-page").addEventListener("click", () => attempt(() => load(Math.max(0, view.offset - PAGE))));
  $("dup-next-page").addEventListener("click", () => attempt(() => load(view.offset + PAGE - leftTheView())));
  $("dup-prev").addEventListener("click", () => attempt(() => step(-1)));
  $("dup-next").addEventListener("click", () => attempt(() => step(1)));
  $("dup-keep-suggested").addEventListener("click", keepSuggested);
  $("dup-not").addEventListener("click", notDuplicates);
  $("dup-undo").addEventListener("click", undoCurrent);
  $("dup-scan").addEventListener("submit", (event) => attempt(() => scan(event)));
  // Space and threshold only matter to near copies.
  $("dup-near").addEventListener("change", () => {
    const off = !$("dup-near").checked;
    $("dup-threshold").disabled = off;
    if ($("dup-space").options.length && $("dup-space").value) $("dup-space").disabled = off;
  });
  window.vitdex.reviewKeys({ list: "dup-keys-list", toggle: "dup-keys-toggle", storageKey: KEYS_HIDDEN, onKey });

  showView();
  showDefaultThreshold();
  attempt(loadSpaces);
  attempt(() => load(view.offset));
})();
