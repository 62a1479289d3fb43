// Which LoRA files a node references, and which of them this machine does not have.
// Names are resolved as the Python nodes resolve them (nodes/lora_stack.py resolve_lora):
// relative to the loras folder, "\" as "/", the file extension optional.

import { LORA_EXTENSIONS, activeEntries, parseStack } from "./stack_text.mjs";

const PROMPT_TAG = /<lora:([^:>]+)(?::([^:>]*))?(?::([^:>]*))?>/g;
export const NO_LORA = "none";

/** LoRA names of `<lora:name:w>` tags in a prompt (the Sample node applies them). */
export function promptLoras(prompt) {
  return [...String(prompt ?? "").matchAll(PROMPT_TAG)].map((m) => m[1].trim());
}

/**
 * The LoRA names a node of our pack would load, from its widget values ({name: value}).
 * Disabled stack rows are not needed, so they are not listed.
 */
export function referencedLoras(nodeType, values) {
  const v = values ?? {};
  switch (nodeType) {
    case "LoraLabLoraLoader":
    case "LoraLabLoraLoaderModelClip":
      return v.lora_name ? [v.lora_name] : [];
    case "LoraLabLoraStack":
    case "LoraLabLoraStackModelClip":
      return activeEntries(parseStack(v.loras ?? "")).map((e) => e.name).filter(Boolean);
    case "LoraLabStrengthSweep": {
      const out = v.lora_name ? [v.lora_name] : [];
      if (v.axis2 === "lora strengths" && v.lora2_name && v.lora2_name !== NO_LORA) out.push(v.lora2_name);
      return out;
    }
    case "LoraLabSampler":
      return promptLoras(v.prompt);
    case "LoraLabPromptLoraTags":
      return promptLoras(v.text);
    default:
      return [];
  }
}

export function normalizeName(name) {
  return String(name).replace(/\\/g, "/").trim();
}

/** Whether `name` is one of `available` (a Set or array of names), extension optional. */
export function isAvailable(name, available) {
  const set = available instanceof Set ? available : new Set(available);
  const n = normalizeName(name);
  if (set.has(n)) return true;
  const low = n.toLowerCase();
  if (LORA_EXTENSIONS.some((ext) => low.endsWith(ext))) return false;
  return LORA_EXTENSIONS.some((ext) => set.has(n + ext));
}

/** The referenced names that are not available, each once, in order. */
export function findMissing(names, available) {
  const set = available instanceof Set ? available : new Set(available);
  const seen = new Set();
  const out = [];
  for (const name of names) {
    const n = normalizeName(name);
    if (!n || seen.has(n)) continue;
    seen.add(n);
    if (!isAvailable(n, set)) out.push(n);
  }
  return out;
}

/** Missing LoRAs of every node of a saved (UI-format) workflow: [{id, type, missing}]. */
export function missingInWorkflow(workflow, available, widgetNames) {
  const out = [];
  for (const node of workflow?.nodes ?? []) {
    const names = widgetNames?.[node.type];
    if (!names || !Array.isArray(node.widgets_values)) continue;
    const values = Object.fromEntries(names.map((n, i) => [n, node.widgets_values[i]]));
    const missing = findMissing(referencedLoras(node.type, values), available);
    if (missing.length) out.push({ id: node.id, type: node.type, missing });
  }
  return out;
}

/** One line for the node's warning: "missing LoRA: a.safetensors" / "missing 3 LoRAs: a, b, c". */
export function missingMessage(missing) {
  if (!missing.length) return "";
  return missing.length === 1 ? `missing LoRA: ${missing[0]}` : `missing ${missing.length} LoRAs: ${missing.join(", ")}`;
}

/**
 * The warnings a LoRA node returned with its last run (its `ui` output's `lora_lab_warnings`,
 * e.g. "128 of 129 layers matched"), as display lines; [] for none or a malformed output.
 * ComfyUI hands `ui` values to onExecuted as given (lists stay lists).
 */
export function runWarnings(output) {
  const list = output?.lora_lab_warnings;
  if (!Array.isArray(list)) return [];
  return list.filter((w) => typeof w === "string" && w.trim()).map((w) => w.trim());
}
