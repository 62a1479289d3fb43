"""sampling: prompt parsing and encoding, schedules, samplers under ComfyUI's names,
text-to-image, the strength sweep. May import: lora, model, io."""
