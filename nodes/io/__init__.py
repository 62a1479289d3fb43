"""io: the bottom floor. Errors, model-folder paths, progress, safetensors reading and
streamed/atomic writing, output destinations (counter names, atomic commits), images and PNG
metadata. May import: nothing else of lora_lab."""
