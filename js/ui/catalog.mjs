// The LoRA files this ComfyUI has (GET /lora_lab/loras) and their info (GET /lora_lab/info),
// fetched through ComfyUI's api object and cached until the next refresh.

export function createCatalog(api) {
  const listeners = new Set();
  const infos = new Map();
  const cat = {
    names: [],
    set: new Set(),
    loaded: false,
    async refresh() {
      let names = null;
      try {
        const r = await api.fetchApi("/lora_lab/loras");
        if (r.ok) names = (await r.json()).names;
      } catch (e) {
        console.warn("LoRA Lab: /lora_lab/loras failed", e);
      }
      if (!Array.isArray(names)) {
        // ComfyUI's own list of the loras folder (no demo names, no sub-folder info needed)
        const r = await api.fetchApi("/models/loras");
        names = r.ok ? await r.json() : [];
      }
      cat.names = names;
      cat.set = new Set(names);
      cat.loaded = true;
      infos.clear();
      for (const fn of listeners) fn(cat);
      return cat;
    },
    onChange(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    /** Info JSON for a LoRA name, or {error} (cached per name). */
    info(name) {
      if (!infos.has(name)) {
        infos.set(name, api.fetchApi(`/lora_lab/info?name=${encodeURIComponent(name)}`)
          .then(async (r) => (r.ok ? r.json() : { error: (await r.json().catch(() => ({}))).error ?? r.statusText }))
          .catch((e) => ({ error: String(e) })));
      }
      return infos.get(name);
    },
  };
  return cat;
}
