// What the LoRA info panel shows, from the server's /lora_lab/info JSON (nodes/lora_info.py).

const KIND_LABELS = { lora: "LoRA", locon: "LoCon", loha: "LoHa", lokr: "LoKr", diff: "full diff", ia3: "IA3",
  dora: "DoRA" };

function fmtNumber(v) {
  return v == null ? "?" : String(Number(Number(v).toFixed(3)));
}

/** "SD 1.x · LoRA · rank 4 / alpha 2 · 136 layers (128 UNet, 8 text)". */
export function summaryLine(info) {
  const parts = [info.family_label ?? "family unknown"];
  const kinds = Object.keys(info.kinds ?? {});
  if (kinds.length) parts.push(kinds.map((k) => KIND_LABELS[k] ?? k).join("+"));
  if (info.rank != null || info.alpha != null) parts.push(`rank ${fmtNumber(info.rank)} / alpha ${fmtNumber(info.alpha)}`);
  const unet = info.layers?.unet ?? 0, text = info.layers?.text ?? 0;
  parts.push(`${unet + text} layers (${unet} UNet, ${text} text)`);
  return parts.join(" · ");
}

/** The panel's content: {summary, triggers: [words], tags: [{tag, count}], notes: [lines], training: [lines]}. */
export function infoView(info, maxTags = 12) {
  const side = info.sidecars ?? {};
  const triggers = [];
  for (const w of [...String(info.trigger_words ?? "").split(","), ...(side.trained_words ?? [])]) {
    const t = String(w).trim();
    if (t && !triggers.some((x) => x.toLowerCase() === t.toLowerCase())) triggers.push(t);
  }
  const notes = [];
  const js = side.json ?? {};
  if (js["preferred weight"] != null && js["preferred weight"] !== 0) notes.push(`preferred weight ${js["preferred weight"]}`);
  for (const key of ["description", "notes", "negative text"]) if (js[key]) notes.push(`${key}: ${js[key]}`);
  const training = Object.entries(info.training ?? {}).map(([k, v]) => `${k.replace(/^(ss_|modelspec\.)/, "")}: ${v}`);
  return {
    summary: summaryLine(info),
    triggers,
    tags: (info.tags ?? []).slice(0, maxTags),
    moreTags: Math.max(0, (info.tag_total ?? 0) - maxTags),
    notes,
    training,
  };
}
