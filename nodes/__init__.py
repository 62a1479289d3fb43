"""LoRA Lab: one sub-package per capability. Imports flow one way, top to bottom:

    defs, cli  ->  graph  ->  demo  ->  train  ->  sampling, merge  ->  lora  ->  model  ->  io

Nothing below defs imports ComfyUI (tests/test_layers.py checks the order)."""
