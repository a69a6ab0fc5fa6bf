// batcher report: filters, search, sort and the large view. Plain DOM, no framework; it reads the
// cards' data-* attributes and text, and writes only textContent (never HTML).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const grid = $("cards");
  const fStatus = $("f-status");
  const fError = $("f-error");
  const fWarning = $("f-warning");
  const fText = $("f-text");
  const sortKey = $("sort");
  const sortDir = $("sort-dir");
  const shown = $("shown");
  const none = $("none");
  const dialog = $("large");
  const content = dialog.querySelector(".content");

  const number = (s) => {
    if (s === undefined || s === "") return null;
    const x = Number(s);
    return Number.isFinite(x) ? x : null;
  };
  const warningsOf = (card) => {
    try {
      const w = JSON.parse(card.dataset.warnings || "[]");
      return Array.isArray(w) ? w.map(String) : [];
    } catch (e) {
      return [];
    }
  };
  const searchText = (card) => {
    const parts = [card.dataset.rowId || ""];
    card.querySelectorAll(".answer, .fields td").forEach((el) => parts.push(el.textContent));
    return parts.join("\n").toLowerCase();
  };

  const index = Array.from(grid.querySelectorAll("article.card"), (card, i) => ({
    card,
    i,
    id: card.dataset.rowId || "",
    status: card.dataset.status || "",
    error: card.dataset.errorType || "",
    warnings: warningsOf(card),
    cost: number(card.dataset.cost),
    latency: number(card.dataset.latency),
    length: number(card.dataset.length),
    text: searchText(card),
  }));

  // the filters offer what the cards hold, with how many cards hold it
  const fill = (select, values) => {
    const counts = new Map();
    values.forEach((v) => counts.set(v, (counts.get(v) || 0) + 1));
    Array.from(counts.keys())
      .sort()
      .forEach((v) => {
        const option = document.createElement("option");
        option.value = v;
        option.textContent = v + " (" + counts.get(v).toLocaleString() + ")";
        select.appendChild(option);
      });
    select.disabled = counts.size === 0;
  };
  fill(fStatus, index.map((e) => e.status));
  fill(fError, index.map((e) => e.error).filter((v) => v !== ""));
  const withWarnings = index.filter((e) => e.warnings.length > 0).length;
  if (withWarnings > 0) {
    const any = document.createElement("option");
    any.value = "";
    any.dataset.any = "1";
    any.textContent = "any (" + withWarnings.toLocaleString() + ")";
    fWarning.appendChild(any);
  }
  fill(fWarning, index.flatMap((e) => Array.from(new Set(e.warnings))));

  const apply = () => {
    const status = fStatus.value;
    const error = fError.value;
    const chosen = fWarning.selectedOptions[0];
    const anyWarning = Boolean(chosen && chosen.dataset.any);
    const warning = fWarning.value;
    const query = fText.value.trim().toLowerCase();
    let n = 0;
    for (const e of index) {
      const show =
        (!status || e.status === status) &&
        (!error || e.error === error) &&
        (anyWarning ? e.warnings.length > 0 : !warning || e.warnings.includes(warning)) &&
        (!query || e.text.includes(query));
      e.card.hidden = !show;
      if (show) n += 1;
    }
    shown.textContent = n.toLocaleString() + " of " + index.length.toLocaleString() + " cards shown";
    none.hidden = n > 0;
  };

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const sort = () => {
    const key = sortKey.value;
    const sign = sortDir.getAttribute("aria-pressed") === "true" ? -1 : 1;
    const order = index.slice().sort((a, b) => {
      if (!key) return sign * (a.i - b.i);
      if (key === "id") return sign * collator.compare(a.id, b.id) || a.i - b.i;
      const x = a[key];
      const y = b[key];
      if (x === null || y === null) return (x === null) - (y === null) || a.i - b.i; // missing: last
      return sign * (x - y) || a.i - b.i;
    });
    const frag = document.createDocumentFragment();
    order.forEach((e) => frag.appendChild(e.card));
    grid.appendChild(frag);
  };

  let opener = null;
  const open = (card) => {
    const large = card.cloneNode(true);
    large.removeAttribute("tabindex");
    large.hidden = false;
    large.classList.add("large");
    large.querySelectorAll("details").forEach((d) => {
      d.open = true;
    });
    content.replaceChildren(large);
    opener = card;
    dialog.showModal();
  };

  grid.addEventListener("click", (ev) => {
    const card = ev.target.closest("article.card");
    if (!card || ev.target.closest("summary, a, button, input, select")) return;
    if (window.getSelection && String(window.getSelection()).length > 0) return; // selecting text
    open(card);
  });
  grid.addEventListener("keydown", (ev) => {
    const card = ev.target.closest && ev.target.closest("article.card");
    if (card && ev.target === card && (ev.key === "Enter" || ev.key === " ")) {
      ev.preventDefault();
      open(card);
    }
  });
  dialog.querySelector(".close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (ev) => {
    if (ev.target === dialog) dialog.close(); // the backdrop
  });
  dialog.addEventListener("close", () => {
    content.replaceChildren();
    if (opener) opener.focus();
    opener = null;
  });

  [fStatus, fError, fWarning].forEach((el) => el.addEventListener("change", apply));
  fText.addEventListener("input", apply);
  sortKey.addEventListener("change", sort);
  sortDir.addEventListener("click", () => {
    const descending = sortDir.getAttribute("aria-pressed") !== "true";
    sortDir.setAttribute("aria-pressed", String(descending));
    sortDir.textContent = descending ? "descending" : "ascending";
    sort();
  });
  apply();
})();
