import assert from "node:assert/strict";
import { test } from "node:test";

import {
  embeddingSummary, embeddingView, findEmbedding, missingEmbeddings, referencedEmbeddings,
} from "../lib/embedding_view.mjs";

const HAVE = ["EasyNegative.safetensors", "neg/bad_hands.pt", "style/ink.safetensors", "other/ink.pt"];

test("names resolve like the node: path, extension optional, file name anywhere unless ambiguous", () => {
  assert.equal(findEmbedding("EasyNegative", HAVE), "EasyNegative.safetensors");
  assert.equal(findEmbedding("neg/bad_hands", HAVE), "neg/bad_hands.pt");
  assert.equal(findEmbedding("bad_hands", HAVE), "neg/bad_hands.pt");
  assert.equal(findEmbedding("bad_hands.pt", HAVE), "neg/bad_hands.pt");
  assert.equal(findEmbedding("ink", HAVE), null); // two files answer: the node names them
  assert.equal(findEmbedding("style/ink", HAVE), "style/ink.safetensors");
  assert.equal(findEmbedding("nope", HAVE), null);
});

test("ComfyUI and A1111 syntax, weights and commas, once each", () => {
  const refs = referencedEmbeddings(
    "a cat, (embedding:bad_hands:1.2), embedding:EasyNegative, easynegative, embedding:gone, xEasyNegative", HAVE);
  assert.deepEqual(refs, [
    { name: "bad_hands", file: "neg/bad_hands.pt", syntax: "comfy" },
    { name: "EasyNegative", file: "EasyNegative.safetensors", syntax: "comfy" },
    { name: "gone", file: null, syntax: "comfy" },
  ]);
  assert.deepEqual(referencedEmbeddings("lowres, EasyNegative", HAVE),
    [{ name: "EasyNegative", file: "EasyNegative.safetensors", syntax: "a1111" }]);
  assert.deepEqual(referencedEmbeddings("easy-negative, EasyNegatives, my.EasyNegative", HAVE), []);
  assert.deepEqual(referencedEmbeddings("ink", HAVE), []); // ambiguous bare word: not claimed
  assert.deepEqual(referencedEmbeddings("", HAVE), []);
  assert.equal(missingEmbeddings(refs.slice(2)), "embedding:gone is not in the embeddings folder");
  assert.equal(missingEmbeddings(refs.slice(0, 2)), "");
});

test("summary and view from the info JSON", () => {
  const info = {
    family: "SD 1.x", vectors: 2, width: 768, training: { step: 3000, sd_checkpoint_name: "v1-5" },
    trigger_words: "EasyNegative, bad anatomy, easynegative", sidecars: { json: { notes: "use at 1.0" } },
  };
  assert.equal(embeddingSummary(info), "SD 1.x · 2 vectors × 768 · 3000 steps on v1-5");
  assert.deepEqual(embeddingView(info), {
    summary: "SD 1.x · 2 vectors × 768 · 3000 steps on v1-5", triggers: ["EasyNegative", "bad anatomy"],
    notes: ["notes: use at 1.0"],
  });
  assert.equal(embeddingSummary({ vectors: 1 }), "family unknown · 1 vector");
});
