// The selectable photo-tile grid the library, search and other pages share
// (window.vitdex.tileGrid).
"use strict";
(function () {
  const { el, selection, thumbUrl, fmt } = window.vitdex;

  /**
   * A grid of selectable photo tiles. Click or Space toggles a tile in the shared
   * selection, Shift-click (or Shift+Space) selects the range from the last one clicked,
   * Enter or double-click opens it, arrow keys move between tiles.
   * `open(id)` gives the page a photo opens to.
   */
  function tileGrid(container, open) {
    let tiles = []; // button elements, in grid order
    let anchor = null; // index of the last tile clicked

    function mark(button, on) {
      button.classList.toggle("selected", on);
      button.setAttribute("aria-pressed", on ? "true" : "false");
    }
    function sync() {
      const ids = selection.ids();
      tiles.forEach((b) => mark(b, ids.has(Number(b.dataset.id))));
    }
    function press(index, range) {
      const id = Number(tiles[index].dataset.id);
      if (range && anchor !== null) {
        const [a, b] = anchor < index ? [anchor, index] : [index, anchor];
        selection.add(...tiles.slice(a, b + 1).map((t) => Number(t.dataset.id)));
      } else {
        selection.toggle(id);
      }
      anchor = index;
    }
    function columns() {
      if (tiles.length < 2) return 1;
      const top = tiles[0].offsetTop;
      const n = tiles.findIndex((t) => t.offsetTop !== top);
      return n < 0 ? tiles.length : n;
    }
    function move(index, key) {
      const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(), ArrowDown: columns() }[key];
      const to = index + step;
      if (to >= 0 && to < tiles.length) tiles[to].focus();
    }

    /** Add tiles: items are {id, badge, title, failed} (failed: text instead of a thumbnail). */
    function append(items) {
      const ids = selection.ids();
      for (const item of items) {
        const index = tiles.length;
        const name = fmt.name(item.path);
        const button = el("button", {
          type: "button",
          class: "tile" + (item.failed ? " tile-failed" : ""),
          title: item.title || name,
          "aria-label": `${name}${item.badge ? ", " + item.badge : ""}`,
          dataset: { id: item.id },
          onclick: (event) => press(index, event.shiftKey),
          ondblclick: () => { location.href = open(item.id); },
          onkeydown: (event) => {
            if (event.key === "Enter") { event.preventDefault(); location.href = open(item.id); }
            else if (event.key.startsWith("Arrow")) { event.preventDefault(); move(index, event.key); }
          },
        },
        item.failed
          ? el("span", { class: "tile-text" }, el("strong", {}, name), el("span", { class: "path" }, item.path), el("span", { class: "error" }, item.failed))
          : el("img", { src: thumbUrl(item.id), alt: "", loading: "lazy" }),
        item.badge != null ? el("span", { class: "badge" }, item.badge) : null);
        mark(button, ids.has(item.id));
        tiles.push(button);
        container.append(el("div", { class: "tile-cell" }, button,
          el("a", { class: "corner tile-open", href: open(item.id), tabindex: "-1", title: "Open", "aria-label": `Open ${name}` }, "↗")));
      }
    }
    function clear() { tiles = []; anchor = null; container.replaceChildren(); }
    window.addEventListener("vitdex:selection", sync);
    return { append, clear, ids: () => tiles.map((t) => Number(t.dataset.id)), tiles: () => tiles };
  }
  window.vitdex.tileGrid = tileGrid;
})();
