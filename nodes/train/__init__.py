"""train: Train LoRA: dataset and buckets, trainable hooked modules, the loop, resumable
state, kohya export. May import: sampling, merge, lora, model, io."""
