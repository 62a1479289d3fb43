// The embedding panel under Sample: for each textual-inversion embedding its prompts use (either
// syntax), the info the server has (GET /lora_lab/embedding_info: family, vectors, training,
// trigger words), and a warning for `embedding:name` that no file answers. Clicking a trigger
// word puts it in front of the prompt.

import { embeddingView, missingEmbeddings, referencedEmbeddings } from "../lib/embedding_view.mjs";
import { insertWords } from "../lib/prompt_words.mjs";
import { createCachedCatalog } from "./catalog.mjs";
import { el, findWidget, fitNode } from "./dom.mjs";

async function loadEmbeddingNames(api) {
  try {
    const r = await api.fetchApi("/lora_lab/embeddings");
    const names = r.ok ? (await r.json()).names : null;
    return { names: Array.isArray(names) ? names : [], loaded: Array.isArray(names) };
  } catch (e) {
    console.warn("LoRA Lab: /lora_lab/embeddings failed", e);
    return { names: [], loaded: false };
  }
}

/** The embeddings this ComfyUI has (GET /lora_lab/embeddings) and their info, cached until refresh(). */
export function createEmbeddingCatalog(api) {
  return createCachedCatalog(api, loadEmbeddingNames,
    (file) => `/lora_lab/embedding_info?name=${encodeURIComponent(file)}`);
}

/** Add the panel (a DOM widget that is not saved) to a node with prompt / negative_prompt widgets. */
export function attachEmbeddingPanel(node, catalog) {
  const warn = el("div", { class: "lora-lab-warn" });
  const list = el("div", { class: "lora-lab-info" });
  const root = el("div", { class: "lora-lab" }, [warn, list]);
  let height = 0;
  let last = null;
  const widget = node.addDOMWidget("lora_lab_embeddings", "lora_lab_embeddings", root, {
    serialize: false, hideOnZoom: true, getValue: () => "", setValue: () => {},
    getMinHeight: () => height, getMaxHeight: () => Math.max(height, 40) + 160,
    onDraw: () => { if (signature() !== last) refresh(); },
  });
  widget.serialize = false;
  const texts = () => ["prompt", "negative_prompt", "text"].map((n) => findWidget(node, n)?.value ?? "").join("\n");

  function signature() {
    return JSON.stringify([texts(), catalog.names.length]);
  }

  const resize = () => {
    const empty = !warn.textContent && !list.childElementCount;
    widget.hidden = empty;
    const h = empty ? 0 : Math.min(warn.offsetHeight + list.offsetHeight, 200) + 2 * (widget.margin ?? 10) + 4;
    if (h !== height) {
      height = h;
      fitNode(node);
    }
  };

  const chip = (word) => el("button", {
    class: "lora-lab-chip trigger", text: word, title: "insert into the prompt",
    onclick: () => {
      const w = findWidget(node, "prompt") ?? findWidget(node, "text");
      if (!w) return;
      w.value = insertWords(w.value, word);
      w.callback?.(w.value);
    },
  });

  async function refresh() {
    last = signature();
    if (!catalog.loaded) {
      warn.textContent = "";
      list.replaceChildren();
      return resize();
    }
    const refs = referencedEmbeddings(texts(), catalog.names);
    warn.textContent = missingEmbeddings(refs);
    const rows = await Promise.all(refs.filter((r) => r.file).map(async (r) => {
      const data = await catalog.info(r.file);
      if (data.error) return el("div", { class: "muted", text: `${r.name}: ${data.error}` });
      const v = embeddingView(data);
      const extra = v.triggers.filter((t) => t.toLowerCase() !== r.name.toLowerCase());
      return el("div", { title: [r.file, ...v.notes].join("\n") }, [
        el("span", { text: `${r.name}: ` }), el("span", { class: "muted", text: v.summary }),
        ...extra.map(chip)]);
    }));
    if (signature() !== last) return undefined; // the prompt changed meanwhile
    list.replaceChildren(...rows);
    return resize();
  }

  const off = catalog.onChange(() => refresh());
  const removed = node.onRemoved;
  node.onRemoved = function (...args) {
    off();
    return removed?.apply(this, args);
  };
  return { widget, refresh };
}
