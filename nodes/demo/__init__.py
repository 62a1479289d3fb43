"""demo: the embedded demo model, demo LoRAs and dataset, made on demand when a demo name is
asked for at the node/CLI edge. May import: train, sampling, merge, lora, model, io."""
