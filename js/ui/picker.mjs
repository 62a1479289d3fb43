// The LoRA picker: a search box over the loras folder's tree (folders fold), in a popup
// positioned under the button that opened it. Enter picks the first match, Escape closes.

import { buildTree, filterNames } from "../lib/lora_tree.mjs";
import { el } from "./dom.mjs";

let open = null; // the one popup at a time

export function closePicker() {
  if (!open) return;
  open.remove();
  open = null;
}

function fileEntry(path, label, pick) {
  return el("div", { class: "file", title: path, text: label, onclick: () => pick(path) });
}

function renderTree(tree, pick, expand) {
  const out = [];
  for (const [name, sub] of Object.entries(tree.folders)) {
    out.push(el("details", { open: expand }, [el("summary", { text: `${name}/` }), el("div", {},
      renderTree(sub, pick, expand))]));
  }
  for (const f of tree.files) out.push(fileEntry(f.path, f.name, pick));
  return out;
}

/** Open the picker under `anchor`; `onPick(name)` gets the chosen name. */
export function openPicker(anchor, names, onPick, current = "") {
  closePicker();
  const list = el("div", { class: "list" });
  const pick = (name) => {
    closePicker();
    onPick(name);
  };
  const search = el("input", { type: "search", placeholder: `search ${names.length} LoRAs`, autocomplete: "off" });
  const render = () => {
    const q = search.value.trim();
    const hits = filterNames(names, q);
    list.replaceChildren(...(q ? hits.map((n) => fileEntry(n, n, pick)) : renderTree(buildTree(hits), pick,
      names.length <= 40)));
    if (!hits.length) list.append(el("div", { class: "muted", text: "no LoRA matches" }));
    list.querySelector(`.file[title="${CSS.escape(current)}"]`)?.classList.add("active");
  };
  search.addEventListener("input", render);
  search.addEventListener("keydown", (e) => {
    if (e.key === "Escape") closePicker();
    if (e.key === "Enter") {
      const first = list.querySelector(".file");
      if (first) pick(first.title);
    }
    e.stopPropagation();
  });
  const popup = el("div", { class: "lora-lab lora-lab-picker" }, [search, list]);
  const r = anchor.getBoundingClientRect();
  popup.style.left = `${Math.max(4, Math.min(r.left, window.innerWidth - 330))}px`;
  popup.style.top = `${Math.min(r.bottom + 2, window.innerHeight - 370)}px`;
  document.body.append(popup);
  open = popup;
  render();
  search.focus();
  const outside = (e) => {
    if (open !== popup) return document.removeEventListener("pointerdown", outside, true);
    if (!popup.contains(e.target)) {
      closePicker();
      document.removeEventListener("pointerdown", outside, true);
    }
  };
  document.addEventListener("pointerdown", outside, true);
  return popup;
}
