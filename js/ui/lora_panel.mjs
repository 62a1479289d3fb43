// The LoRA panel under a LoRA node: a warning for referenced LoRA files this machine does not
// have, and the info of one LoRA (family, rank/alpha, trigger words, tags, notes). Clicking a
// trigger word or tag puts it in front of the prompt of the nearest Sample / Sweep downstream.

import { infoView } from "../lib/info_view.mjs";
import { findMissing, isAvailable, missingMessage, referencedLoras } from "../lib/missing.mjs";
import { findPromptNode, insertWords } from "../lib/prompt_words.mjs";
import { el, findWidget, fitNode, widgetValues } from "./dom.mjs";

function outputTargets(graph, id) {
  const node = graph.getNodeById(id);
  const out = [];
  for (const o of node?.outputs ?? []) {
    for (const lid of o.links ?? []) {
      const link = graph.getLink?.(lid) ?? graph.links?.[lid];
      if (link) out.push(link.target_id);
    }
  }
  return out;
}

/** Put `words` in front of the prompt downstream of `node`; false when there is none. */
export function insertIntoPrompt(node, words) {
  const graph = node.graph;
  if (!graph) return false;
  const target = findPromptNode(node.id, (id) => outputTargets(graph, id),
    (id) => !!findWidget(graph.getNodeById(id), "prompt"));
  const w = target != null && findWidget(graph.getNodeById(target), "prompt");
  if (!w) return false;
  w.value = insertWords(w.value, words);
  w.callback?.(w.value);
  graph.setDirtyCanvas?.(true, true);
  return true;
}

/**
 * Add the panel to `node` (a DOM widget that is not saved). `focusName()` gives the LoRA whose
 * info is shown (null: none). Returns {refresh()}: call it when a name or the catalog changes.
 */
export function attachLoraPanel(node, catalog, { focusName = () => null, warningsOnly = false } = {}) {
  const warn = el("div", { class: "lora-lab-warn" });
  const info = el("div", { class: "lora-lab-info" });
  const root = el("div", { class: "lora-lab" }, warningsOnly ? [warn] : [warn, info]);
  let shown = undefined;
  let height = 0;
  let lastSignature = null; // referenced names + focus at the last refresh
  let runNotes = []; // warnings the node returned with its last run (a partial LoRA match, ...)
  const widget = node.addDOMWidget("lora_lab_panel", "lora_lab_panel", root, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => height,
    getMaxHeight: () => Math.max(height, 40) + 200,
    onDraw: () => { // values set without a callback (paste, other extensions): refresh when they change
      if (signature() !== lastSignature) refresh();
    },
  });
  widget.serialize = false;

  const resize = () => {
    // the content's own height (not the scroll box's), capped, plus the DOM widget's margins
    const content = warn.offsetHeight + (warningsOnly ? 0 : info.offsetHeight);
    const want = Math.min(content, 260) + 2 * (widget.margin ?? 10) + 4;
    const empty = !warn.textContent && (warningsOnly || !info.childElementCount);
    widget.hidden = empty && warningsOnly;
    const h = empty ? (warningsOnly ? 0 : 14) : want;
    if (h !== height) {
      height = h;
      fitNode(node);
    }
  };

  const chip = (text, title, cls, words) => el("button", {
    class: `lora-lab-chip ${cls}`, text, title,
    onclick: () => {
      if (!insertIntoPrompt(node, words)) {
        navigator.clipboard?.writeText(words).catch(() => {}); // (not allowed on plain http)
        warn.textContent = "no prompt downstream: copied to the clipboard";
        setTimeout(() => refresh(), 2500);
      }
    },
  });

  async function showInfo(name) {
    shown = name;
    if (!name) {
      info.replaceChildren(el("span", { class: "muted", text: "LoRA info: pick a LoRA" }));
      return resize();
    }
    if (catalog.loaded && !isAvailable(name, catalog.set)) {
      info.replaceChildren(el("span", { class: "muted", text: `${name}: not in the loras folder` }));
      return resize();
    }
    info.replaceChildren(el("span", { class: "muted", text: `reading ${name} ...` }));
    const data = await catalog.info(name);
    if (shown !== name) return; // another name was picked meanwhile
    if (data.error) {
      info.replaceChildren(el("span", { class: "muted", text: data.error }));
      return resize();
    }
    const v = infoView(data);
    const parts = [el("div", { text: v.summary, title: name })];
    if (v.triggers.length) {
      parts.push(el("div", {}, [el("span", { class: "muted", text: "trigger: " }),
        ...v.triggers.map((t) => chip(t, "insert into the prompt", "trigger", t)),
        v.triggers.length > 1 ? chip("all", "insert all trigger words", "trigger", v.triggers.join(", ")) : null]));
    }
    if (v.tags.length) {
      parts.push(el("div", {}, [el("span", { class: "muted", text: "tags: " }),
        ...v.tags.map((t) => chip(`${t.tag} ${t.count}`, "insert into the prompt", "", t.tag)),
        v.moreTags ? el("span", { class: "muted", text: ` +${v.moreTags}` }) : null]));
    }
    for (const n of v.notes) parts.push(el("div", { class: "muted", text: n }));
    if (v.training.length) {
      parts.push(el("details", { class: "muted", ontoggle: () => resize() }, [el("summary", { text: "training" }),
        ...v.training.map((t) => el("div", { text: t }))]));
    }
    info.replaceChildren(...parts);
    resize();
  }

  function signature() {
    return JSON.stringify([referencedLoras(node.comfyClass ?? node.type, widgetValues(node)), focusName()]);
  }

  function refresh() {
    lastSignature = signature();
    const names = referencedLoras(node.comfyClass ?? node.type, widgetValues(node));
    const missing = catalog.loaded ? missingMessage(findMissing(names, catalog.set)) : "";
    warn.textContent = [missing, ...runNotes].filter(Boolean).join(" · "); // + the last run's warnings
    root.title = warn.textContent;
    if (!warningsOnly) {
      const focus = focusName();
      if (focus !== shown) showInfo(focus);
    }
    resize();
  }

  const off = catalog.onChange(() => {
    shown = undefined;
    refresh();
  });
  const removed = node.onRemoved;
  node.onRemoved = function (...args) {
    off();
    return removed?.apply(this, args);
  };
  const setRunWarnings = (lines) => {
    runNotes = lines;
    refresh();
  };
  return { widget, refresh, setRunWarnings, showInfo: (name) => { shown = undefined; return showInfo(name); } };
}
