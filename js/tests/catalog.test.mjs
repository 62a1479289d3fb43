// The LoRA and embedding catalogs (js/ui/catalog.mjs, js/ui/embedding_panel.mjs) against a fake
// ComfyUI api: names, fallback, listeners, and the per-name info cache dropped on refresh.
import assert from "node:assert/strict";
import { test } from "node:test";
import { createCatalog } from "../ui/catalog.mjs";
import { createEmbeddingCatalog } from "../ui/embedding_panel.mjs";

function fakeApi(routes) {
  const calls = [];
  return {
    calls,
    async fetchApi(path) {
      calls.push(path);
      const hit = Object.entries(routes).find(([p]) => path.startsWith(p));
      if (!hit) throw new Error(`no route ${path}`);
      const [status, body] = typeof hit[1] === "function" ? hit[1](path) : hit[1];
      return { ok: status === 200, status, statusText: `HTTP ${status}`, json: async () => body };
    },
  };
}

test("LoRA catalog: names, listeners, info cached per name until refresh", async () => {
  const api = fakeApi({
    "/lora_lab/loras": [200, { names: ["a.safetensors", "sub/b.safetensors"] }],
    "/lora_lab/info": (p) => (p.includes("missing") ? [404, { error: "no such LoRA" }] : [200, { rank: 8, path: p }]),
  });
  const cat = createCatalog(api);
  const seen = [];
  const off = cat.onChange((c) => seen.push(c.names.length));
  await cat.refresh();
  assert.deepEqual(cat.names, ["a.safetensors", "sub/b.safetensors"]);
  assert.ok(cat.loaded && cat.set.has("sub/b.safetensors"));
  assert.deepEqual(seen, [2]);
  const info = await cat.info("sub/b.safetensors");
  assert.equal(info.rank, 8);
  assert.ok(info.path.endsWith("name=sub%2Fb.safetensors"));
  await cat.info("sub/b.safetensors");
  assert.equal(api.calls.filter((c) => c.startsWith("/lora_lab/info")).length, 1); // cached
  assert.deepEqual(await cat.info("missing.safetensors"), { error: "no such LoRA" });
  await cat.refresh();
  await cat.info("sub/b.safetensors");
  assert.equal(api.calls.filter((c) => c.startsWith("/lora_lab/info?name=sub")).length, 2); // dropped on refresh
  off();
  await cat.refresh();
  assert.deepEqual(seen, [2, 2]); // no call after off()
});

test("LoRA catalog falls back to ComfyUI's /models/loras", async () => {
  const api = fakeApi({ "/lora_lab/loras": [500, {}], "/models/loras": [200, ["x.safetensors"]] });
  const cat = await createCatalog(api).refresh();
  assert.deepEqual(cat.names, ["x.safetensors"]);
  assert.ok(cat.loaded);
});

test("embedding catalog: names, info path, and not loaded when the route fails", async () => {
  const api = fakeApi({
    "/lora_lab/embeddings": [200, { names: ["easyneg.safetensors"] }],
    "/lora_lab/embedding_info": [200, { vectors: 8 }],
  });
  const cat = await createEmbeddingCatalog(api).refresh();
  assert.deepEqual(cat.names, ["easyneg.safetensors"]);
  assert.ok(cat.loaded);
  assert.deepEqual(await cat.info("easyneg.safetensors"), { vectors: 8 });
  assert.ok(api.calls.includes("/lora_lab/embedding_info?name=easyneg.safetensors"));
  const broken = await createEmbeddingCatalog(fakeApi({ "/lora_lab/embeddings": [500, {}] })).refresh();
  assert.equal(broken.loaded, false);
  assert.deepEqual(broken.names, []);
});
