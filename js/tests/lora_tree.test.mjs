import assert from "node:assert/strict";
import { test } from "node:test";

import { infoView, summaryLine } from "../lib/info_view.mjs";
import { buildTree, filterNames, shortName } from "../lib/lora_tree.mjs";
import { findPromptNode, insertWords, splitWords } from "../lib/prompt_words.mjs";

test("picker tree and search", () => {
  const tree = buildTree(["b.safetensors", "style/z.safetensors", "A.safetensors", "style/ink/x.pt"]);
  assert.deepEqual(tree.files.map((f) => f.name), ["A.safetensors", "b.safetensors"]);
  assert.deepEqual(Object.keys(tree.folders), ["style"]);
  assert.deepEqual(tree.folders.style.files, [{ name: "z.safetensors", path: "style/z.safetensors" }]);
  assert.deepEqual(tree.folders.style.folders.ink.files[0].path, "style/ink/x.pt");
  assert.deepEqual(filterNames(["style/Ink.safetensors", "cat.safetensors"], "ink STY"), ["style/Ink.safetensors"]);
  assert.deepEqual(filterNames(["a", "b"], "  "), ["a", "b"]);
  assert.equal(shortName("style/ink.safetensors"), "ink");
});

test("trigger words go in front of the prompt, once", () => {
  assert.deepEqual(splitWords(" a, b c ,, "), ["a", "b c"]);
  assert.equal(insertWords("a cat", "llstyle watercolor"), "llstyle watercolor, a cat");
  assert.equal(insertWords("llstyle watercolor, a cat", "LLstyle watercolor, soft"), "soft, llstyle watercolor, a cat");
  assert.equal(insertWords("", "x, y"), "x, y");
  assert.equal(insertWords("x, y", "x"), "x, y");
});

test("the prompt downstream of a LoRA node", () => {
  const edges = { 1: [2], 2: [3, 4], 3: [], 4: [5], 5: [2] }; // with a cycle
  const prompts = new Set([5]);
  assert.equal(findPromptNode(1, (id) => edges[id] ?? [], (id) => prompts.has(id)), 5);
  assert.equal(findPromptNode(3, (id) => edges[id] ?? [], (id) => prompts.has(id)), null);
  assert.equal(findPromptNode(2, (id) => edges[id] ?? [], (id) => id === 2), null); // not itself
});

test("info panel content", () => {
  const info = { family_label: "SD 1.x", kinds: { lora: 120, dora: 16 }, rank: 4, alpha: 2, layers: { unet: 128, text: 8 },
    trigger_words: "llstyle, watercolor", tags: [{ tag: "a", count: 3 }, { tag: "b", count: 1 }], tag_total: 30,
    training: { ss_num_epochs: "10", "modelspec.title": "T" },
    sidecars: { trained_words: ["Watercolor", "sumi-e"], json: { "preferred weight": 0.8, notes: "n" } } };
  assert.equal(summaryLine(info), "SD 1.x · LoRA+DoRA · rank 4 / alpha 2 · 136 layers (128 UNet, 8 text)");
  const v = infoView(info, 1);
  assert.deepEqual(v.triggers, ["llstyle", "watercolor", "sumi-e"]);
  assert.deepEqual(v.tags, [{ tag: "a", count: 3 }]);
  assert.equal(v.moreTags, 29);
  assert.deepEqual(v.notes, ["preferred weight 0.8", "notes: n"]);
  assert.deepEqual(v.training, ["num_epochs: 10", "title: T"]);
  assert.equal(summaryLine({ layers: {} }), "family unknown · 0 layers (0 UNet, 0 text)");
});
