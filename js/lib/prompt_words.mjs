// Inserting a LoRA's trigger words (or a training tag) into a prompt, and finding the prompt.

/** Split "a, b c, d" into ["a", "b c", "d"]. */
export function splitWords(words) {
  return String(words ?? "").split(",").map((w) => w.trim()).filter(Boolean);
}

/** The prompt with the words that are not in it yet put in front ("words, prompt"). */
export function insertWords(prompt, words) {
  const text = String(prompt ?? "");
  const have = new Set(splitWords(text.toLowerCase()));
  const add = [];
  for (const w of splitWords(words)) {
    const low = w.toLowerCase();
    if (!have.has(low) && !add.some((a) => a.toLowerCase() === low)) add.push(w);
  }
  if (!add.length) return text;
  return text.trim() ? `${add.join(", ")}, ${text.replace(/^\s+/, "")}` : add.join(", ");
}

/**
 * The nearest node downstream of `startId` that has a prompt, breadth first:
 * targetsOf(id) -> ids its outputs feed; hasPrompt(id) -> bool. Null when none.
 */
export function findPromptNode(startId, targetsOf, hasPrompt, limit = 200) {
  const seen = new Set([startId]);
  const queue = [...targetsOf(startId)];
  while (queue.length && seen.size < limit) {
    const id = queue.shift();
    if (seen.has(id)) continue;
    seen.add(id);
    if (hasPrompt(id)) return id;
    queue.push(...targetsOf(id));
  }
  return null;
}
