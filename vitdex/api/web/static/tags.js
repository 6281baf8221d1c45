// Tags page: every tag with its photo count, each opening the library filtered by it;
// rename (merging into a tag that already has the name) and delete, confirmed.
"use strict";
(function () {
  const { api, attempt, el, toast } = window.vitdex;
  const body = document.querySelector("#tag-table tbody");
  const none = document.getElementById("no-tags");
  const tagPath = (name) => `/api/v1/tags/${encodeURIComponent(name)}`;
  const plural = (n) => `${n.toLocaleString()} photo${n === 1 ? "" : "s"}`;

  function nameCell(tag) {
    return el("td", { class: "tag-name" }, el("a", { href: `/?tag=${encodeURIComponent(tag.name)}` }, tag.name));
  }

  /** Turn a row's name into a small form; Escape or Cancel puts the link back. */
  function editName(row, tag) {
    const input = el("input", { value: tag.name, "aria-label": `New name for ${tag.name}`, maxlength: "128", required: true });
    const cancel = () => row.firstChild.replaceWith(nameCell(tag));
    const form = el("form", { class: "tag-rename", autocomplete: "off" }, input,
      el("button", { type: "submit", class: "primary" }, "Save"),
      el("button", { type: "button", onclick: cancel }, "Cancel"));
    input.addEventListener("keydown", (event) => { if (event.key === "Escape") cancel(); });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = input.value.trim();
      if (!name || name === tag.name) { cancel(); return; }
      attempt(async () => {
        const answer = await api(tagPath(tag.name), { method: "PATCH", json: { name } });
        toast(answer.merged ? `merged “${tag.name}” into “${answer.tag.name}” (${plural(answer.tag.count)})` : `renamed “${tag.name}” to “${answer.tag.name}”`);
        await load();
      });
    });
    row.firstChild.replaceWith(el("td", { class: "tag-name" }, form));
    input.focus();
    input.select();
  }

  function row(tag) {
    const tr = el("tr", { dataset: { tag: tag.name } });
    tr.append(nameCell(tag), el("td", { class: "num" }, tag.count.toLocaleString()),
      el("td", { class: "tag-actions" },
        el("button", { type: "button", onclick: () => editName(tr, tag), "aria-label": `Rename ${tag.name}` }, "Rename"),
        el("button", { type: "button", class: "danger", "aria-label": `Delete ${tag.name}`, onclick: () => {
          if (!confirm(`Delete the tag “${tag.name}”? It comes off ${plural(tag.count)}; the photos stay.`)) return;
          attempt(async () => {
            await api(tagPath(tag.name), { method: "DELETE" });
            toast(`deleted “${tag.name}”`);
            await load();
          });
        } }, "Delete")));
    return tr;
  }

  async function load() {
    const { tags } = await api("/api/v1/tags");
    body.replaceChildren(...tags.map(row));
    none.hidden = tags.length > 0;
    document.getElementById("tag-table").hidden = tags.length === 0;
  }
  window.addEventListener("vitdex:tags", () => attempt(load));
  attempt(load);
})();
