// The LoRA picker's data: names in folders, and search.

/** names ("a/b/c.safetensors") -> {folders: {name: subtree}, files: [{name, path}]}, sorted. */
export function buildTree(names) {
  const root = { folders: {}, files: [] };
  for (const path of [...names].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base" }))) {
    const parts = path.split("/");
    let node = root;
    for (const dir of parts.slice(0, -1)) node = node.folders[dir] ??= { folders: {}, files: [] };
    node.files.push({ name: parts[parts.length - 1], path });
  }
  return root;
}

/** Names containing every word of `query` (case-insensitive, in the path or file name). */
export function filterNames(names, query) {
  const words = String(query ?? "").toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return [...names];
  return names.filter((n) => {
    const low = n.toLowerCase();
    return words.every((w) => low.includes(w));
  });
}

/** "style/ink.safetensors" -> "ink" (what a row shows; the full name is its tooltip). */
export function shortName(path) {
  const file = String(path).split("/").pop();
  return file.replace(/\.(safetensors|ckpt|pt|pth|bin)$/i, "");
}
