// Stack LoRAs as rows: on/off, the LoRA (picker with folders), UNet and text strengths, info,
// remove, drag to reorder, and "+ LoRA". The node's `loras` text widget stays the single
// source of truth: every edit rewrites that text (lines nobody touched keep their exact
// text), and the rows are rebuilt from the text whenever it changes (typing, loading, undo).

import { isAvailable } from "../lib/missing.mjs";
import { shortName } from "../lib/lora_tree.mjs";
import { addLora, formatStrength, moveItem, parseStack, removeItem, serializeStack, toggleItem, updateItem }
  from "../lib/stack_text.mjs";
import { el, findWidget, fitNode } from "./dom.mjs";
import { openPicker } from "./picker.mjs";

const ROW_H = 24;

function strengthInput(value, title, onChange) {
  const input = el("input", { type: "number", step: "0.05", min: "-10", max: "10", title,
    value: formatStrength(value) });
  input.addEventListener("change", () => {
    const v = Number(input.value);
    if (Number.isFinite(v)) onChange(v);
    else input.value = formatStrength(value);
  });
  return input;
}

/** Add the rows editor to a Stack LoRAs node; `getPanel()` gives the attachLoraPanel that shows a
 * row's info (made after the rows, so it sits under them). */
export function attachStackEditor(node, catalog, getPanel = () => null) {
  const text = findWidget(node, "loras");
  if (!text) return null;
  const rowsEl = el("div");
  const root = el("div", { class: "lora-lab" }, [rowsEl]);
  let last = null; // the text the rows were built from
  let items = [];
  let focus = null; // the LoRA whose info the panel shows
  let dragFrom = null;

  const widget = node.addDOMWidget("lora_lab_rows", "lora_lab_rows", root, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => "",
    setValue: () => {},
    // the rows as rendered (or an estimate before the first layout), plus the widget's margins
    getMinHeight: () => (rowsEl.scrollHeight || (Math.max(1, visible().length) + 1) * ROW_H) + 2 * (widget.margin ?? 10) + 4,
    onDraw: () => sync(), // the text may have been set from outside (load, undo, paste)
  });
  widget.serialize = false;

  function visible() {
    return items.map((it, index) => ({ it, index })).filter(({ it }) => it.kind === "lora" || it.kind === "invalid");
  }

  function commit(next) {
    items = next;
    last = serializeStack(items);
    text.value = last; // the textarea shows it, the graph saves it (the setter runs the widget's callback)
    render();
    getPanel()?.refresh();
  }

  function row({ it, index }) {
    if (it.kind === "invalid") {
      return el("div", { class: "lora-lab-row invalid", title: it.error }, [
        el("span", { class: "lora-lab-name", text: `⚠ ${it.raw.trim()}` }),
        el("button", { text: "✕", title: "remove this line", onclick: () => commit(removeItem(items, index)) }),
      ]);
    }
    const missing = catalog.loaded && !isAvailable(it.name, catalog.set);
    const nameBtn = el("button", { class: "lora-lab-name", text: shortName(it.name) || "(pick a LoRA)",
      title: missing ? `${it.name}: not in the loras folder` : it.name });
    nameBtn.addEventListener("click", () => openPicker(nameBtn, catalog.names, (name) => {
      focus = name;
      commit(updateItem(items, index, { name }));
    }, it.name));
    const r = el("div", { class: `lora-lab-row${it.enabled ? "" : " off"}${missing ? " missing" : ""}`,
      draggable: true }, [
      el("span", { class: "lora-lab-grip", text: "⋮⋮", title: "drag to reorder" }),
      el("input", { type: "checkbox", checked: it.enabled, title: "on/off (off = a # line)",
        onchange: () => commit(toggleItem(items, index)) }),
      nameBtn,
      strengthInput(it.unet, "UNet strength", (v) => commit(updateItem(items, index,
        it.text === it.unet ? { unet: v, text: v } : { unet: v }))),
      strengthInput(it.text, "text-encoder strength", (v) => commit(updateItem(items, index, { text: v }))),
      el("button", { text: "ℹ", title: "LoRA info", onclick: () => { focus = it.name; getPanel()?.showInfo(it.name); } }),
      el("button", { text: "✕", title: "remove", onclick: () => commit(removeItem(items, index)) }),
    ]);
    r.addEventListener("dragstart", (e) => {
      dragFrom = index;
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData("text/plain", String(index));
    });
    r.addEventListener("dragover", (e) => {
      if (dragFrom === null) return;
      e.preventDefault();
      r.classList.add("drop");
    });
    r.addEventListener("dragleave", () => r.classList.remove("drop"));
    r.addEventListener("drop", (e) => {
      e.preventDefault();
      r.classList.remove("drop");
      if (dragFrom !== null && dragFrom !== index) commit(moveItem(items, dragFrom, index));
      dragFrom = null;
    });
    r.addEventListener("dragend", () => { dragFrom = null; });
    return r;
  }

  function render() {
    const rows = visible().map(row);
    if (!rows.length) rows.push(el("div", { class: "muted", text: "no LoRAs yet" }));
    const add = el("button", { text: "+ LoRA", title: "add a LoRA at strength 1" });
    add.addEventListener("click", () => openPicker(add, catalog.names, (name) => {
      focus = name;
      commit(addLora(items, name));
    }));
    rowsEl.replaceChildren(...rows, el("div", { class: "lora-lab-bar" }, [add,
      el("span", { class: "muted", text: "unet · text strengths" })]));
    fitNode(node);
  }

  function sync(force = false) {
    const value = String(text.value ?? "");
    if (!force && value === last) return;
    last = value;
    items = parseStack(value);
    render();
    getPanel()?.refresh();
  }

  text.element?.addEventListener("input", () => sync());
  const off = catalog.onChange(() => sync(true));
  const removed = node.onRemoved;
  node.onRemoved = function (...args) {
    off();
    return removed?.apply(this, args);
  };
  sync(true);
  return { widget, sync, focusName: () => focus ?? items.find((i) => i.kind === "lora" && i.enabled)?.name ?? null };
}
