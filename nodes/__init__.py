"""LoRA Lab core and node definitions. Core modules never import ComfyUI."""
