import assert from "node:assert/strict";
import { test } from "node:test";

import {
  findMissing, isAvailable, missingInWorkflow, missingMessage, promptLoras, referencedLoras,
} from "../lib/missing.mjs";

const HAVE = new Set(["style.safetensors", "sub/ink.safetensors", "old.pt"]);

test("names resolve like the nodes: folders, backslashes, optional extension", () => {
  assert.ok(isAvailable("style.safetensors", HAVE));
  assert.ok(isAvailable("style", HAVE));
  assert.ok(isAvailable("sub\\ink.safetensors", HAVE));
  assert.ok(isAvailable("old", HAVE));
  assert.ok(!isAvailable("Style.safetensors", HAVE)); // file names are case-sensitive
  assert.ok(!isAvailable("ink.safetensors", HAVE)); // not at the top level
  assert.ok(!isAvailable("style.ckpt", HAVE));
});

test("what each node references", () => {
  assert.deepEqual(referencedLoras("LoraLabLoraLoader", { lora_name: "a.safetensors" }), ["a.safetensors"]);
  assert.deepEqual(referencedLoras("LoraLabLoraStack", { loras: "a:1\n# b:1\n<lora:c:0.5>\nbad:x" }), ["a", "c"]);
  assert.deepEqual(referencedLoras("LoraLabStrengthSweep", { lora_name: "a", axis2: "seeds", lora2_name: "b" }), ["a"]);
  assert.deepEqual(referencedLoras("LoraLabStrengthSweep", { lora_name: "a", axis2: "lora strengths", lora2_name: "b" }),
    ["a", "b"]);
  assert.deepEqual(referencedLoras("LoraLabSampler", { prompt: "x <lora:p:0.5> y <lora:q:1:0.2>" }), ["p", "q"]);
  assert.deepEqual(referencedLoras("KSampler", { lora_name: "a" }), []);
  // the MODEL/CLIP nodes reference what their LORA_LAB_MODEL twins do
  assert.deepEqual(referencedLoras("LoraLabLoraLoaderModelClip", { lora_name: "a.safetensors" }), ["a.safetensors"]);
  assert.deepEqual(referencedLoras("LoraLabLoraStackModelClip", { loras: "a:1\n# b:1\n<lora:c:0.5>" }), ["a", "c"]);
  assert.deepEqual(referencedLoras("LoraLabPromptLoraTags", { text: "x <lora:p:0.5> y" }), ["p"]);
  assert.deepEqual(promptLoras(undefined), []);
});

test("missing names, once each, in order", () => {
  assert.deepEqual(findMissing(["x", "style", "x", "sub/ink.safetensors", "y.safetensors", ""], HAVE), ["x", "y.safetensors"]);
  assert.equal(missingMessage([]), "");
  assert.equal(missingMessage(["x"]), "missing LoRA: x");
  assert.equal(missingMessage(["x", "y"]), "missing 2 LoRAs: x, y");
});

test("a shared workflow's missing LoRAs", () => {
  const wf = { nodes: [
    { id: 1, type: "LoraLabLoraLoader", widgets_values: ["gone.safetensors", 1, 1, ""] },
    { id: 2, type: "LoraLabLoraStack", widgets_values: ["style:0.5\nfar/away.safetensors", ""] },
    { id: 3, type: "LoraLabLoraLoader", widgets_values: ["style.safetensors", 1, 1, ""] },
    { id: 4, type: "Note", widgets_values: ["gone.safetensors"] },
  ] };
  const names = { LoraLabLoraLoader: ["lora_name", "strength_unet", "strength_text", "block_weights"],
    LoraLabLoraStack: ["loras", "block_weights"] };
  assert.deepEqual(missingInWorkflow(wf, HAVE, names), [
    { id: 1, type: "LoraLabLoraLoader", missing: ["gone.safetensors"] },
    { id: 2, type: "LoraLabLoraStack", missing: ["far/away.safetensors"] },
  ]);
});

test("run warnings from a node's ui output", async () => {
  const { runWarnings } = await import("../lib/missing.mjs");
  assert.deepEqual(runWarnings({ lora_lab_warnings: ["LoraLabLoraLoader: LoRA 'x': 128 of 129 layers matched ", ""] }),
    ["LoraLabLoraLoader: LoRA 'x': 128 of 129 layers matched"]);
  assert.deepEqual(runWarnings({ images: [] }), []);
  assert.deepEqual(runWarnings(null), []);
  assert.deepEqual(runWarnings({ lora_lab_warnings: "not a list" }), []);
});
