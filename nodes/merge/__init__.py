"""merge: baking stacks into checkpoints (streamed single file, diffusers folders) and the
LoRA file tools (exact/SVD merge, resize, extract, kohya save). May import: lora, model, io."""
