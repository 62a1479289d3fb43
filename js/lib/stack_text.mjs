// The Stack LoRAs text, line by line, as the Python node reads it (nodes/lora_stack.py):
//   name[:unet[:text]]      text strength defaults to the unet one, both to 1
//   <lora:name:te[:unet]>   A1111 tag: te = text-encoder strength, unet defaults to te
//   # ...                   a line the node skips (a disabled LoRA, or a comment)
// The text widget is the single source of truth: the rows editor parses it into items,
// edits them, and serializes them back. Lines nobody edited keep their exact text.

const LINE_BREAKS = /(\r\n|[\n\v\f\r\x1c-\x1e\x85\u2028\u2029])/; // Python's str.splitlines()
const TAG = /^<lora:([^:>]+)(?::([^:>]*))?(?::([^:>]*))?>$/;
const DECIMAL = /^[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?$/;
const SPECIAL = /^([+-]?)(inf|infinity|nan)$/i;
// Python's whitespace (str.strip / float()): differs from JS trim() on \x1c-\x1f, \x85, \ufeff
const PY_SPACE = "[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const PY_STRIP = new RegExp(`^${PY_SPACE}+|${PY_SPACE}+$`, "g");
export const pyStrip = (s) => String(s).replace(PY_STRIP, "");
export const LORA_EXTENSIONS = [".safetensors", ".ckpt", ".pt", ".pth", ".bin"];

/** Python's float(text), or null where Python raises ValueError. */
export function pyFloat(text) {
  const s = pyStrip(text);
  if (DECIMAL.test(s)) return Number(s.replace(/_/g, ""));
  const m = SPECIAL.exec(s);
  if (!m) return null;
  if (m[2].toLowerCase() === "nan") return NaN;
  return m[1] === "-" ? -Infinity : Infinity;
}

class StackSyntaxError extends Error {}

// One strength range everywhere (nodes/io/checks.py STRENGTH_MIN/MAX): the node refuses the rest.
export const STRENGTH_MIN = -10;
export const STRENGTH_MAX = 10;

function num(value, line) {
  const v = pyFloat(value);
  if (v === null) throw new StackSyntaxError(`${JSON.stringify(pyStrip(value))} is not a number in "${line}"`);
  if (!Number.isFinite(v)) throw new StackSyntaxError(`${JSON.stringify(pyStrip(value))} is not a finite number in "${line}"`);
  if (v < STRENGTH_MIN || v > STRENGTH_MAX) {
    throw new StackSyntaxError(`${JSON.stringify(pyStrip(value))} is outside ${STRENGTH_MIN}..${STRENGTH_MAX} in "${line}"`);
  }
  return v;
}

/** One non-comment line -> {name, unet, text, tag} (throws StackSyntaxError like the node). */
export function parseEntry(line) {
  const m = TAG.exec(line);
  if (m) {
    const te = m[2] ? num(m[2], line) : 1.0;
    const unet = m[3] ? num(m[3], line) : te;
    return { name: pyStrip(m[1]), unet, text: te, tag: true };
  }
  const [name, ...nums] = line.split(":");
  if (nums.length > 2) throw new StackSyntaxError(`expected name[:unet_strength[:text_strength]] in "${line}"`);
  const unet = nums.length && pyStrip(nums[0]) ? num(nums[0], line) : 1.0;
  const text = nums.length > 1 && pyStrip(nums[1]) ? num(nums[1], line) : unet;
  return { name: pyStrip(name), unet, text, tag: false };
}

function hasLoraExtension(name) {
  const low = name.toLowerCase();
  return LORA_EXTENSIONS.some((ext) => low.endsWith(ext));
}

/**
 * Text -> items, one per line: {kind: "lora", enabled, name, unet, text, raw} |
 * {kind: "invalid", raw, error} | {kind: "comment", raw} | {kind: "blank", raw}, each with `sep`,
 * the line break that followed it ("" for the last line).
 * A `#` line is a disabled LoRA when what follows parses and looks like one (a tag, a
 * strength, or a LoRA file extension); otherwise it is a comment.
 */
export function parseStack(text) {
  const src = text ?? "";
  if (src === "") return [];
  const parts = src.split(LINE_BREAKS); // [line, break, line, break, ..., line]
  const items = [];
  for (let i = 0; i < parts.length; i += 2) items.push({ ...parseLine(parts[i]), sep: parts[i + 1] ?? "" });
  return items;
}

function parseLine(raw) {
  const line = pyStrip(raw);
  if (!line) return { kind: "blank", raw };
  if (line.startsWith("#")) {
    const rest = pyStrip(line.replace(/^#+/, ""));
    try {
      const e = parseEntry(rest);
      if (e.name && (e.tag || rest.includes(":") || hasLoraExtension(e.name))) {
        return { kind: "lora", enabled: false, ...e, raw };
      }
    } catch (err) {
      if (!(err instanceof StackSyntaxError)) throw err;
    }
    return { kind: "comment", raw };
  }
  try {
    return { kind: "lora", enabled: true, ...parseEntry(line), raw };
  } catch (err) {
    if (!(err instanceof StackSyntaxError)) throw err;
    return { kind: "invalid", raw, error: err.message };
  }
}

/** What the Python node applies: [{name, unet, text}] of the enabled rows, in order. */
export function activeEntries(items) {
  return items.filter((i) => i.kind === "lora" && i.enabled).map(({ name, unet, text }) => ({ name, unet, text }));
}

export function formatStrength(v) {
  if (!Number.isFinite(v)) return String(v).replace("Infinity", "inf").replace("NaN", "nan");
  return String(Number(v.toFixed(4)));
}

/** The canonical line of a LoRA row: `name:unet` (text = unet) or `name:unet:text`, `# ` when off. */
export function formatEntry(item) {
  const body = item.text === item.unet || (Number.isNaN(item.text) && Number.isNaN(item.unet))
    ? `${item.name}:${formatStrength(item.unet)}`
    : `${item.name}:${formatStrength(item.unet)}:${formatStrength(item.text)}`;
  return item.enabled ? body : `# ${body}`;
}

/** Items -> text. Unedited items keep their line and the line break after it; edited rows
 * (raw == null) are written canonically; new line breaks copy the text's first one. */
export function serializeStack(items) {
  const fallback = items.find((i) => i.sep)?.sep ?? "\n";
  return items.map((it, i) => {
    const line = it.raw != null ? it.raw : it.kind === "lora" ? formatEntry(it) : "";
    return i < items.length - 1 ? line + (it.sep || fallback) : line;
  }).join("");
}

// Edits: each returns a new array; edited rows lose `raw` and are written canonically.
export function updateItem(items, index, changes) {
  return items.map((it, i) => (i === index ? { ...it, ...changes, raw: null } : it));
}

export function addLora(items, name, strength = 1.0) {
  const row = { kind: "lora", enabled: true, name, unet: strength, text: strength, tag: false, raw: null, sep: "" };
  let at = items.length;
  while (at > 0 && items[at - 1].kind === "blank") at--; // before trailing blank lines (a final newline)
  const out = [...items];
  out.splice(at, 0, row);
  return out;
}

export function removeItem(items, index) {
  return items.filter((_, i) => i !== index);
}

/** Move the item at `from` so that it ends up at index `to` (drag and drop). */
export function moveItem(items, from, to) {
  if (from === to || from < 0 || from >= items.length) return items;
  const out = [...items];
  const [it] = out.splice(from, 1);
  out.splice(Math.max(0, Math.min(to, out.length)), 0, it);
  return out;
}

/** On/off: adds or removes the line's "# ", keeping the rest of the line as written. */
export function toggleItem(items, index) {
  const it = items[index];
  if (it.raw == null) return updateItem(items, index, { enabled: !it.enabled });
  const raw = it.enabled ? `# ${it.raw}` : it.raw.replace(/^[\s]*#+[ \t]*/, "");
  return items.map((x, i) => (i === index ? { ...x, enabled: !x.enabled, raw } : x));
}
