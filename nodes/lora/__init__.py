"""lora: LoRA key index, file formats, adapter math (one delta function per kind), the
patcher, stacks and their text syntax, block weights and LoRA info. May import: model, io."""
