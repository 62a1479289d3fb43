// The LoRA files this ComfyUI has (GET /lora_lab/loras) and their info (GET /lora_lab/info),
// fetched through ComfyUI's api object and cached until the next refresh. createCachedCatalog is
// the part the embedding catalog shares: a list of names from the server, change listeners, and
// a per-name cache of info requests.

/** Info JSON for a response, or {error} with the server's message (or the HTTP status text). */
async function infoOf(r) {
  return r.ok ? r.json() : { error: (await r.json().catch(() => ({}))).error ?? r.statusText };
}

/**
 * A catalog: `load(api)` gives {names, loaded}; `infoPath(name)` the info request's path.
 * refresh() reloads the names, drops the info cache and tells the listeners.
 */
export function createCachedCatalog(api, load, infoPath) {
  const listeners = new Set();
  const infos = new Map();
  const cat = {
    names: [],
    set: new Set(),
    loaded: false,
    async refresh() {
      const { names, loaded } = await load(api);
      cat.names = names;
      cat.set = new Set(names);
      cat.loaded = loaded;
      infos.clear();
      for (const fn of listeners) fn(cat);
      return cat;
    },
    onChange(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    /** Info JSON for a name, or {error} (cached per name until the next refresh). */
    info(name) {
      if (!infos.has(name)) {
        infos.set(name, api.fetchApi(infoPath(name)).then(infoOf).catch((e) => ({ error: String(e) })));
      }
      return infos.get(name);
    },
  };
  return cat;
}

async function loadLoraNames(api) {
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
  return { names, loaded: true };
}

export function createCatalog(api) {
  return createCachedCatalog(api, loadLoraNames, (name) => `/lora_lab/info?name=${encodeURIComponent(name)}`);
}
