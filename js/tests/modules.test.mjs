// The browser-side modules load (no DOM needed at import), every relative import of the
// entry resolves, and ComfyUI finds exactly one extension entry (it loads every *.js file
// under WEB_DIRECTORY as an extension; the modules are *.mjs for that reason).
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const JS = join(dirname(fileURLToPath(import.meta.url)), "..");

function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]);
}

test("one extension entry: js/lora_lab.js", () => {
  assert.deepEqual(files(JS).filter((f) => f.endsWith(".js")).map((f) => f.slice(JS.length + 1)), ["lora_lab.js"]);
});

test("the entry imports ComfyUI's scripts and our modules only, by relative paths that exist", () => {
  const src = readFileSync(join(JS, "lora_lab.js"), "utf8");
  const specs = [...src.matchAll(/^import .* from "([^"]+)";$/gm)].map((m) => m[1]);
  assert.ok(specs.includes("../../scripts/app.js") && specs.includes("../../scripts/api.js"));
  for (const s of specs.filter((x) => !x.startsWith("../../scripts/"))) {
    assert.ok(s.startsWith("./") && existsSync(join(JS, s)), s);
  }
});

test("standard hooks and widgets only: no canvas drawing, no overridden app/api/litegraph methods", () => {
  for (const f of files(JS).filter((x) => /\.m?js$/.test(x) && !x.includes("/tests/"))) {
    const src = readFileSync(f, "utf8");
    assert.doesNotMatch(src, /\bapp\.\w+\s*=[^=]|\bapi\.\w+\s*=[^=]|\.prototype\.|getContext\(|onDrawForeground|onDrawBackground/,
      f);
  }
});

test("every ui/lib module loads", async () => {
  for (const f of files(JS).filter((x) => x.endsWith(".mjs") && !x.includes("/tests/"))) {
    const mod = await import(f);
    assert.ok(Object.keys(mod).length, f);
  }
});
