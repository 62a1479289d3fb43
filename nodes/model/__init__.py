"""model: the model handle, checkpoint keys / config inference / load / save, the shipped
CLIP tokenizers, device choice and the tiny test/demo layouts. May import: io."""
