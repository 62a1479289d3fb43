// LoRA Lab's ComfyUI editor extension: registration only. The logic lives in ./lib (pure ES
// modules, tested with `node --test js/tests/`) and the DOM in ./ui. Standard hooks and
// standard/DOM widgets only: no canvas drawing, no overridden app or api methods.
//
//   (the MODEL/CLIP variants LoraLabLoraLoaderModelClip, LoraLabLoraStackModelClip and
//   LoraLabPromptLoraTags get exactly what Load LoRA, Stack LoRAs and Sample get)
//   Stack LoRAs     rows editor over its `loras` text (+ LoRA info and missing-file warning)
//   Load LoRA       LoRA info (family, rank/alpha, trigger words, tags) + missing-file warning
//   Strength Sweep  the same for its LoRA(s)
//   Sample          warning for <lora:...> prompt tags naming files this machine lacks, and the
//                   info of the textual-inversion embeddings its prompts use (either syntax)
//   Train LoRA      live step / loss / ETA, and the loss chart at the end

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { runWarnings } from "./lib/missing.mjs";
import { addProgress } from "./lib/train_progress.mjs";
import { createCatalog } from "./ui/catalog.mjs";
import { findWidget, injectStyles } from "./ui/dom.mjs";
import { attachEmbeddingPanel, createEmbeddingCatalog } from "./ui/embedding_panel.mjs";
import { attachLoraPanel } from "./ui/lora_panel.mjs";
import { attachStackEditor } from "./ui/stack_editor.mjs";
import { attachTrainMonitor } from "./ui/train_monitor.mjs";

const TRAIN_EVENT = "lora_lab.train_progress";
const catalog = createCatalog(api);
const embeddings = createEmbeddingCatalog(api);
const runs = new Map(); // node id -> training state
const controls = new WeakMap(); // node -> {panel, editor, monitor}

function afterChange(widget, fn) {
  if (!widget) return;
  const previous = widget.callback;
  widget.callback = function (...args) {
    const r = previous?.apply(this, args);
    fn();
    return r;
  };
}

function setupNode(node) {
  const type = node.comfyClass;
  if (!type?.startsWith("LoraLab")) return;
  const c = {};
  if (type === "LoraLabLoraLoader" || type === "LoraLabLoraLoaderModelClip" || type === "LoraLabStrengthSweep") {
    c.panel = attachLoraPanel(node, catalog, { focusName: () => findWidget(node, "lora_name")?.value ?? null });
    for (const name of ["lora_name", "lora2_name", "axis2"]) afterChange(findWidget(node, name), () => c.panel.refresh());
  } else if (type === "LoraLabLoraStack" || type === "LoraLabLoraStackModelClip") {
    c.editor = attachStackEditor(node, catalog, () => c.panel);
    c.panel = attachLoraPanel(node, catalog, { focusName: () => c.editor?.focusName() ?? null });
  } else if (type === "LoraLabSampler" || type === "LoraLabPromptLoraTags") {
    c.panel = attachLoraPanel(node, catalog, { warningsOnly: true });
    const prompt = findWidget(node, "prompt") ?? findWidget(node, "text");
    afterChange(prompt, () => c.panel.refresh()); // typing runs the callback too
    if (type === "LoraLabSampler") {
      c.embeddings = attachEmbeddingPanel(node, embeddings);
      for (const name of ["prompt", "negative_prompt"]) afterChange(findWidget(node, name), () => c.embeddings.refresh());
    }
  } else if (type.startsWith("LoraLabTrain")) {
    c.monitor = attachTrainMonitor(node);
    const previous = node.onExecuted;
    node.onExecuted = function (output) { // a trainer may also return its losses as ui.loss
      previous?.apply(this, arguments);
      const loss = output?.loss;
      if (Array.isArray(loss) && loss.length) {
        let s = null;
        loss.forEach((l, i) => { s = addProgress(s, { step: i + 1, total: loss.length, loss: Number(l), eta: 0 }); });
        runs.set(String(node.id), s);
        c.monitor.update(s);
      }
    };
  }
  if (c.panel) { // warnings the node returned with its run (ui.lora_lab_warnings) show on the node
    const before = node.onExecuted;
    node.onExecuted = function (output) {
      before?.apply(this, arguments);
      c.panel.setRunWarnings(runWarnings(output));
    };
  }
  controls.set(node, c);
  c.panel?.refresh();
  c.embeddings?.refresh();
}

function onTrainProgress({ detail }) {
  if (!detail || detail.node == null) return;
  const id = String(detail.node);
  const state = addProgress(runs.get(id), detail);
  runs.set(id, state);
  const node = app.graph?.getNodeById(Number(id)) ?? app.graph?.getNodeById(id);
  if (!node) return; // e.g. inside a subgraph
  let c = controls.get(node);
  if (!c) controls.set(node, (c = {}));
  c.monitor ??= attachTrainMonitor(node); // any node that reports progress gets the monitor
  c.monitor.update(state);
}

app.registerExtension({
  name: "LoraLab.NodeEditor",
  async setup() {
    injectStyles();
    api.addEventListener(TRAIN_EVENT, onTrainProgress);
    await Promise.all([catalog.refresh(), embeddings.refresh()]);
  },
  nodeCreated(node) {
    setupNode(node);
  },
  loadedGraphNode(node) {
    const c = controls.get(node);
    c?.editor?.sync(true);
    c?.panel?.refresh();
    c?.embeddings?.refresh();
  },
  async afterConfigureGraph() {
    await catalog.refresh(); // a shared workflow: check its LoRAs against this machine's files
  },
  async refreshComboInNodes() {
    await Promise.all([catalog.refresh(), embeddings.refresh()]);
  },
});
