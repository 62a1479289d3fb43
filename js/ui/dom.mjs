// Small DOM helpers and the extension's stylesheet (ComfyUI's CSS variables, so themes apply).

export function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of [].concat(children)) if (c != null && c !== false) node.append(c);
  return node;
}

const CSS = `
.lora-lab { font: 12px/1.35 sans-serif; color: var(--input-text, #ddd); box-sizing: border-box;
  overflow: auto; padding: 2px 0; }
.lora-lab * { box-sizing: border-box; }
.lora-lab-warn { color: var(--error-text, #ff6b6b); font-weight: 600; padding: 2px 4px; }
.lora-lab-warn:empty { display: none; }
.lora-lab-row { display: flex; align-items: center; gap: 4px; padding: 1px 2px; border-radius: 4px; }
.lora-lab-row.off { opacity: .5; }
.lora-lab-row.missing .lora-lab-name { color: var(--error-text, #ff6b6b); }
.lora-lab-row.invalid { color: var(--error-text, #ff6b6b); }
.lora-lab-row.drop { outline: 1px dashed var(--input-text, #ddd); }
.lora-lab-grip { cursor: grab; opacity: .6; user-select: none; padding: 0 2px; }
.lora-lab-name { flex: 1 1 auto; min-width: 40px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
  text-align: left; }
.lora-lab button, .lora-lab input { font: inherit; color: inherit; background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 1px 4px; }
.lora-lab button { cursor: pointer; }
.lora-lab input[type=number] { width: 52px; }
.lora-lab input[type=checkbox] { margin: 0; }
.lora-lab-bar { display: flex; gap: 4px; padding: 2px; }
.lora-lab-info { padding: 2px 4px; border-top: 1px solid var(--border-color, #444); margin-top: 2px; }
.lora-lab-info .muted { opacity: .7; }
.lora-lab-chip { display: inline-block; margin: 1px 2px; padding: 0 5px !important; border-radius: 9px !important; }
.lora-lab-chip.trigger { border-color: var(--p-primary-color, #4a9) !important; }
.lora-lab-picker { position: fixed; z-index: 10000; width: 320px; max-height: 360px; display: flex;
  flex-direction: column; background: var(--comfy-menu-bg, #353535); border: 1px solid var(--border-color, #555);
  border-radius: 6px; box-shadow: 0 4px 16px rgba(0,0,0,.5); }
.lora-lab-picker input { margin: 6px; }
.lora-lab-picker .list { overflow: auto; padding: 0 6px 6px; }
.lora-lab-picker summary { cursor: pointer; opacity: .85; }
.lora-lab-picker .file { cursor: pointer; padding: 1px 4px 1px 14px; border-radius: 3px; white-space: nowrap; }
.lora-lab-picker .file:hover, .lora-lab-picker .file.active { background: var(--comfy-input-bg, #222); }
.lora-lab-picker details > div { padding-left: 10px; }
.lora-lab-train .track { height: 6px; background: var(--comfy-input-bg, #222); border-radius: 3px; margin: 3px 0; }
.lora-lab-train .fill { height: 100%; background: var(--p-primary-color, #4a9); border-radius: 3px; width: 0; }
.lora-lab-train svg { width: 100%; display: block; }
`;

export function injectStyles() {
  if (document.getElementById("lora-lab-styles")) return;
  document.head.append(el("style", { id: "lora-lab-styles", text: CSS }));
}

/** {widget name: value} of a graph node. */
export function widgetValues(node) {
  return Object.fromEntries((node.widgets ?? []).map((w) => [w.name, w.value]));
}

export function findWidget(node, name) {
  return (node.widgets ?? []).find((w) => w.name === name);
}

/** Grow the node when a DOM widget needs more room (never shrinks what the user sized). */
export function fitNode(node) {
  const size = node.computeSize?.();
  if (!size) return;
  if (size[1] > node.size[1]) node.setSize([node.size[0], size[1]]);
  node.setDirtyCanvas?.(true, true);
}
