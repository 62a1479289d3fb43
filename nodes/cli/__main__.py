"""`python -m lora_lab.nodes.cli ...` (as `accelerate launch -m lora_lab.nodes.cli train ...` uses)."""
from .main import main

raise SystemExit(main())
