// Embeddings a prompt uses, and what the embedding panel shows from /lora_lab/embedding_info
// (nodes/sampling/embeddings.py embedding_info). Names are matched as the Sample node matches
// them: ComfyUI's `embedding:name` (a weight `(embedding:name:1.2)` and a trailing comma are not
// part of the name), and A1111's bare file name as a word, case-insensitive (a1111_to_comfy).

const COMFY = /(?:^|[\s(,])embedding:([^\s,()]+)/g;

function stem(rel) {
  const base = String(rel).replace(/\\/g, "/").split("/").pop();
  return base.replace(/\.(safetensors|pt|bin|pth)$/i, "");
}

function escape(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The catalog entry (relative file name) a prompt's embedding name resolves to, or null. */
export function findEmbedding(name, names) {
  const n = String(name).replace(/\\/g, "/");
  const list = [...names];
  const exact = list.find((r) => r === n || r.replace(/\.(safetensors|pt|bin|pth)$/i, "") === n);
  if (exact) return exact;
  if (n.includes("/")) return null;
  const byStem = list.filter((r) => stem(r) === stem(n));
  return byStem.length === 1 ? byStem[0] : null; // several: the node reports the ambiguity
}

/**
 * [{name, file, syntax}] for each embedding `text` uses, in order, once each: syntax "comfy"
 * (`embedding:name`; file null when no file answers) or "a1111" (a known file name as a word).
 */
export function referencedEmbeddings(text, names) {
  const out = [];
  const seen = new Set();
  const add = (name, syntax) => {
    const file = findEmbedding(name, names);
    const key = (file ?? name).toLowerCase();
    if (seen.has(key)) return;
    seen.add(key);
    out.push({ name, file, syntax });
  };
  const src = String(text ?? "");
  for (const m of src.matchAll(COMFY)) add(m[1].replace(/:-?[\d.]+$/, ""), "comfy");
  const stems = [...new Set([...names].map(stem))].sort((a, b) => b.length - a.length);
  if (stems.length) {
    const word = new RegExp(`(?<![\\w:.\\-/])(${stems.map(escape).join("|")})(?![\\w\\-])`, "gi");
    for (const m of src.matchAll(word)) {
      const hit = stems.find((s) => s.toLowerCase() === m[1].toLowerCase());
      if (findEmbedding(hit, names)) add(hit, "a1111");
    }
  }
  return out;
}

/** "embedding:foo is not in the embeddings folder" for ComfyUI-syntax names no file answers. */
export function missingEmbeddings(refs) {
  const missing = refs.filter((r) => r.file == null).map((r) => `embedding:${r.name}`);
  if (!missing.length) return "";
  return `${missing.join(", ")} ${missing.length === 1 ? "is" : "are"} not in the embeddings folder`;
}

/** "SD 1.x · 2 vectors × 768 · 3000 steps on v1-5". */
export function embeddingSummary(info) {
  const parts = [info.family ?? "family unknown"];
  const n = info.vectors ?? 0;
  parts.push(`${n} vector${n === 1 ? "" : "s"}${info.width ? ` × ${info.width}` : ""}`);
  const t = info.training ?? {};
  if (t.step != null) parts.push(`${t.step} steps${t.sd_checkpoint_name ? ` on ${t.sd_checkpoint_name}` : ""}`);
  return parts.join(" · ");
}

/** The panel's content for one embedding: {summary, triggers: [words], notes: [lines]}. */
export function embeddingView(info) {
  const triggers = [];
  for (const w of String(info.trigger_words ?? "").split(",")) {
    const t = w.trim();
    if (t && !triggers.some((x) => x.toLowerCase() === t.toLowerCase())) triggers.push(t);
  }
  const js = info.sidecars?.json ?? {};
  const notes = ["description", "notes", "negative text"].filter((k) => js[k]).map((k) => `${k}: ${js[k]}`);
  return { summary: embeddingSummary(info), triggers, notes };
}
