import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  activeEntries, addLora, formatEntry, moveItem, parseStack, pyFloat, removeItem, serializeStack, toggleItem,
  updateItem,
} from "../lib/stack_text.mjs";

// The same cases tests/test_lora_info.py runs through the Python node's parser.
const CASES = JSON.parse(readFileSync(new URL("./stack_cases.json", import.meta.url), "utf8"));

test("parses like the Python node (shared cases)", () => {
  for (const c of CASES) {
    const items = parseStack(c.text);
    if (c.error) {
      assert.ok(items.some((i) => i.kind === "invalid"), c.text);
      continue;
    }
    assert.deepEqual(activeEntries(items).map((e) => [e.name, e.unet, e.text]), c.entries, c.text);
  }
});

test("Python float syntax", () => {
  assert.equal(pyFloat(" 0.5 "), 0.5);
  assert.equal(pyFloat("1_000.5"), 1000.5);
  assert.equal(pyFloat(".5e1"), 5);
  assert.equal(pyFloat("1."), 1);
  assert.equal(pyFloat("-inf"), -Infinity);
  assert.ok(Number.isNaN(pyFloat("NaN")));
  for (const bad of ["", "0x10", "1__0", "_1", "1e", "Infinity0", "1,5"]) assert.equal(pyFloat(bad), null, bad);
  assert.equal(pyFloat("\x1c2\x85"), 2); // Python's whitespace, not only JS's
});

test("round trip keeps every line as written", () => {
  for (const text of ["", "a", "a\n", "a:0.5\r\n# off.safetensors:1\r\n\r\n# just a note\n<lora:b:0.3:0.9>\nbad:x\n",
    "  spaced : 0.7 : 0.2  \n\n\n"]) {
    assert.equal(serializeStack(parseStack(text)), text);
  }
});

test("disabled rows and comments", () => {
  const items = parseStack("# style.safetensors\n# a note about styles\n#cat:0.5\n# <lora:ink:0.4>\n#");
  assert.deepEqual(items.map((i) => i.kind), ["lora", "comment", "lora", "lora", "comment"]);
  assert.deepEqual(items.filter((i) => i.kind === "lora").map((i) => [i.name, i.enabled, i.unet]),
    [["style.safetensors", false, 1], ["cat", false, 0.5], ["ink", false, 0.4]]);
  assert.deepEqual(activeEntries(items), []);
});

test("edits rewrite only the edited row", () => {
  let items = parseStack("a:0.5\r\n<lora:b:0.3:0.9>\r\n# note\r\n");
  items = updateItem(items, 1, { unet: 0.25 });
  assert.equal(serializeStack(items), "a:0.5\r\nb:0.25:0.3\r\n# note\r\n");
  items = toggleItem(items, 0);
  assert.equal(serializeStack(items), "# a:0.5\r\nb:0.25:0.3\r\n# note\r\n");
  assert.equal(serializeStack(toggleItem(parseStack("  x : 0.50 "), 0)), "#   x : 0.50 "); // the line as written
  assert.equal(serializeStack(toggleItem(parseStack("## x:0.50"), 0)), "x:0.50");
  assert.equal(serializeStack(toggleItem(toggleItem(parseStack("<lora:x:0.5>"), 0), 0)), "<lora:x:0.5>");
  items = addLora(items, "sub/c.safetensors", 0.8);
  assert.equal(serializeStack(items), "# a:0.5\r\nb:0.25:0.3\r\n# note\r\nsub/c.safetensors:0.8\r\n");
  items = moveItem(items, 3, 0);
  assert.deepEqual(activeEntries(items).map((e) => e.name), ["sub/c.safetensors", "b"]);
  items = removeItem(items, 1);
  assert.deepEqual(activeEntries(parseStack(serializeStack(items))), [{ name: "sub/c.safetensors", unet: 0.8, text: 0.8 },
    { name: "b", unet: 0.25, text: 0.3 }]);
});

test("canonical lines", () => {
  const row = { kind: "lora", enabled: true, name: "x", unet: 0.1 + 0.2, text: 0.1 + 0.2 };
  assert.equal(formatEntry(row), "x:0.3");
  assert.equal(formatEntry({ ...row, text: 1 }), "x:0.3:1");
  assert.equal(formatEntry({ ...row, enabled: false, unet: -1.5, text: -1.5 }), "# x:-1.5");
  assert.equal(serializeStack(addLora([], "new")), "new:1");
  assert.equal(moveItem([1, 2, 3], 0, 2).join(), "2,3,1");
  assert.equal(moveItem([1, 2, 3], 2, 0).join(), "3,1,2");
});
