"""cli: the `lora-lab` command (run, merge, lora, train). May import everything below."""
