"""defs: the thin ComfyUI node classes (schema + a short execute calling core) and the
server routes of the editor extension. May import everything below (graph, demo, train,
sampling, merge, lora, model, io); nothing imports defs but the pack entry and the CLI."""
