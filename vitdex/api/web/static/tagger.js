// Tagging the current selection from any page (the "Tag…" button in the header).
// The button shows while photos are selected; it opens a small dialog to name a tag (the
// existing ones offered as you type) and put it on, or take it off, every selected photo.
// Pages that show tags listen for "vitdex:tags" to refresh.
"use strict";
(function () {
  const { api, attempt, el, toast, selection } = window.vitdex;
  // The API takes at most 100,000 ids a request; a smaller batch keeps each one quick.
  const BATCH = 20000;

  /** The names of every tag, for the dialog's suggestions and the photo page. */
  async function tagNames() {
    const { tags } = await api("/api/v1/tags");
    return tags.map((t) => t.name);
  }

  /** Put the tag `name` on (`add`) or take it off the photos `ids`; the photos changed. */
  async function apply(name, ids, add) {
    const path = `/api/v1/tags/${encodeURIComponent(name)}/images`;
    let changed = 0, tag = null;
    for (let i = 0; i < ids.length; i += BATCH) {
      const body = { image_ids: ids.slice(i, i + BATCH) };
      const answer = await api(path, { method: add ? "POST" : "DELETE", json: body });
      changed += add ? answer.added : answer.removed;
      tag = answer.tag;
    }
    window.dispatchEvent(new CustomEvent("vitdex:tags", { detail: { tag, ids } }));
    return { changed, tag };
  }

  const plural = (n) => `${n.toLocaleString()} photo${n === 1 ? "" : "s"}`;

  let dialog = null;
  function build() {
    const input = el("input", { id: "tagger-name", name: "tag", list: "tagger-names", autocomplete: "off",
      required: true, maxlength: "128", "aria-describedby": "tagger-count", placeholder: "tag name" });
    const names = el("datalist", { id: "tagger-names" });
    const count = el("p", { id: "tagger-count", class: "muted" });
    const form = el("form", { method: "dialog", class: "tagger-form" },
      el("h2", { id: "tagger-title" }, "Tag the selected photos"),
      count,
      el("label", { for: "tagger-name" }, "Tag"),
      input, names,
      el("div", { class: "tagger-buttons" },
        el("button", { type: "submit", value: "add", class: "primary", id: "tagger-add" }, "Add tag"),
        el("button", { type: "submit", value: "remove", id: "tagger-remove" }, "Remove tag"),
        el("button", { type: "button", id: "tagger-cancel", onclick: () => dialog.close() }, "Cancel")));
    dialog = el("dialog", { id: "tagger", class: "tagger", "aria-labelledby": "tagger-title" }, form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const add = (event.submitter?.value || "add") === "add";
      const name = input.value.trim();
      if (!name) { input.focus(); return; }
      const ids = [...selection.ids()];
      attempt(async () => {
        const { changed, tag } = await apply(name, ids, add);
        dialog.close();
        if (add) {
          toast(changed ? `tagged ${plural(changed)} “${tag.name}”` : `all ${plural(ids.length)} already had “${tag.name}”`);
        } else {
          toast(changed ? `removed “${tag.name}” from ${plural(changed)}` : `none of the ${plural(ids.length)} had “${tag.name}”`);
        }
      });
    });
    document.body.append(dialog);
    return { input, names, count };
  }

  let parts = null;
  async function open() {
    parts = parts || build();
    const n = selection.ids().size;
    parts.count.textContent = `${plural(n)} selected.`;
    parts.input.value = "";
    dialog.showModal();
    parts.input.focus();
    const names = await tagNames();
    parts.names.replaceChildren(...names.map((name) => el("option", { value: name })));
  }

  function showButton() {
    const button = document.getElementById("tag-selection");
    if (button) button.hidden = selection.ids().size === 0;
  }
  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("tag-selection")?.addEventListener("click", () => attempt(open));
    showButton();
  });
  window.addEventListener("vitdex:selection", showButton);
  window.addEventListener("storage", showButton);

  window.vitdex.tags = { apply, tagNames };
})();
