// vitdex pages: what every page script shares (window.vitdex).
// Plain JavaScript, no build step: each page adds its own small module after this one.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  /** An error the API answered, with its message for people. */
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  /**
   * Call the JSON API. `options.json` is sent as JSON, `options.form` as multipart.
   * Every call that changes something carries the page's CSRF token. Resolves to the
   * parsed body (null for 204); rejects with ApiError carrying the server's message.
   */
  async function api(path, options = {}) {
    const init = { method: options.method || "GET", headers: {}, credentials: "same-origin" };
    if (options.json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
    } else if (options.form !== undefined) {
      init.body = options.form;
    }
    if (init.method !== "GET" && init.method !== "HEAD") init.headers["X-CSRF-Token"] = csrf;
    if (options.signal) init.signal = options.signal;
    const response = await fetch(path, init);
    if (response.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new ApiError(401, "sign in first");
    }
    const text = await response.text();
    let body = null;
    if (text) {
      try { body = JSON.parse(text); } catch { body = text; }
    }
    if (!response.ok) {
      const detail = body && typeof body === "object" ? body.detail || JSON.stringify(body) : body;
      throw new ApiError(response.status, detail || response.statusText);
    }
    return body;
  }

  /** Show a short message in the corner; `bad` for errors. */
  function toast(message, bad = false) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const el = document.createElement("div");
    el.className = "toast" + (bad ? " bad" : "");
    el.textContent = message;
    box.appendChild(el);
    setTimeout(() => el.remove(), bad ? 8000 : 4000);
  }

  /** Run an async action; a failure becomes a toast instead of an uncaught rejection. */
  async function attempt(action) {
    try { return await action(); } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) toast(err.message || String(err), true);
      return undefined;
    }
  }

  /** Create an element: el("a", {href: "/"}, "text", child...). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const thumbUrl = (id) => `/api/v1/images/${id}/thumbnail`;
  const fileUrl = (id) => `/api/v1/images/${id}/file`;

  // The selection: image ids kept in sessionStorage, so picking photos in the grid, on the
  // map or in a search carries over to "use as seeds" on the datasets page.
  const KEY = "vitdex.selection";
  const selection = {
    ids() {
      try { return new Set(JSON.parse(sessionStorage.getItem(KEY) || "[]")); } catch { return new Set(); }
    },
    save(ids) {
      sessionStorage.setItem(KEY, JSON.stringify([...ids]));
      window.dispatchEvent(new CustomEvent("vitdex:selection", { detail: ids }));
    },
    has(id) { return this.ids().has(id); },
    add(...ids) { const s = this.ids(); ids.forEach((i) => s.add(i)); this.save(s); },
    remove(...ids) { const s = this.ids(); ids.forEach((i) => s.delete(i)); this.save(s); },
    toggle(id) { this.has(id) ? this.remove(id) : this.add(id); },
    set(ids) { this.save(new Set(ids)); },
    clear() { this.save(new Set()); },
  };
  function showSelectionCount() {
    const pill = document.getElementById("selection-count");
    if (!pill) return;
    const n = selection.ids().size;
    pill.hidden = n === 0;
    pill.textContent = `${n} selected`;
  }
  window.addEventListener("vitdex:selection", showSelectionCount);
  window.addEventListener("storage", showSelectionCount);
  document.addEventListener("DOMContentLoaded", showSelectionCount);

  /**
   * Follow a job until it ends: calls onUpdate(job) after each poll, resolves to the
   * final job. Polling (1 s) keeps it simple and works through any proxy.
   */
  async function followJob(jobId, onUpdate, intervalMs = 1000) {
    for (;;) {
      const job = await api(`/api/v1/jobs/${jobId}`);
      onUpdate?.(job);
      if (!["queued", "running"].includes(job.state)) return job;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  /** A progress bar element and a function to set it (0..1, or null for unknown). */
  function progressBar() {
    const fill = el("span");
    const bar = el("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
    return [bar, (fraction) => {
      const pct = fraction == null ? 0 : Math.round(Math.max(0, Math.min(1, fraction)) * 100);
      fill.style.width = pct + "%";
      bar.setAttribute("aria-valuenow", String(pct));
    }];
  }

  const fmt = {
    score: (x) => (x == null ? "" : Number(x).toFixed(3)),
    date: (iso) => (iso ? iso.replace("T", " ").slice(0, 16) : ""),
    bytes(n) {
      if (n == null) return "";
      const units = ["B", "KB", "MB", "GB", "TB"];
      let i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
      return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
    },
    name: (path) => (path || "").split("/").pop(),
  };

  // A review page's keyboard: the list of keys that "?" (or its button) shows and hides,
  // remembered per page, and a keydown handler that leaves typing in a field alone.
  // Returns the show/hide function (``show(true)`` hides).
  function reviewKeys({ list, toggle, storageKey, onKey }) {
    const listEl = document.getElementById(list);
    const button = document.getElementById(toggle);
    function show(force) {
      const hide = force === undefined ? !listEl.hidden : force;
      listEl.hidden = hide;
      button.setAttribute("aria-expanded", String(!hide));
      button.firstChild.textContent = hide ? "Show keys" : "Hide keys";
      try { localStorage.setItem(storageKey, hide ? "1" : ""); } catch { /* private mode */ }
    }
    button.addEventListener("click", () => show());
    document.addEventListener("keydown", (event) => {
      if (event.altKey || event.ctrlKey || event.metaKey || event.isComposing) return;
      const target = event.target;
      if (target instanceof HTMLElement && (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName))) return;
      if (event.key === "?") { event.preventDefault(); show(); return; }
      onKey(event);
    });
    try { if (localStorage.getItem(storageKey)) show(true); } catch { /* private mode */ }
    return show;
  }

  window.vitdex = { api, ApiError, toast, attempt, el, thumbUrl, fileUrl, selection, followJob, progressBar, fmt, csrf, reviewKeys };
})();
