"""Start-up: what `lora-lab run --validate-only` imports.

Checking a graph (every workflow in workflows/, node inputs listed for each node type) needs no
torch, diffusers or transformers, so it answers in a fraction of a second instead of the seconds
those imports take. A full run does need them; what they pull in is theirs (model/hf_classes.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lora_lab

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# the child imports lora_lab from where this test did (a PYTHONPATH folder or pytest's rootdir parent)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(lora_lab.__file__).parent.parent),
                                                    os.environ.get("PYTHONPATH", "")])}
HEAVY = ("torch", "diffusers", "transformers", "peft", "scipy", "safetensors")

SCRIPT = """
import json, sys
from lora_lab.nodes.cli.main import main
rc = main(sys.argv[1:])
print(json.dumps({{"rc": rc, "loaded": sorted(m for m in {heavy!r} if m in sys.modules)}}))
""".format(heavy=HEAVY)


def test_validate_only_imports_no_torch(tmp_path):
    args = ["run", str(WORKFLOWS), "--validate-only", "--quiet", "--models-dir", str(tmp_path / "models"),
            "--output-dir", str(tmp_path / "out"), "--input-dir", str(tmp_path / "in")]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, proc.stdout + proc.stderr
    assert result["loaded"] == [], f"validating {WORKFLOWS} imported {result['loaded']}"


def test_the_check_can_fail(tmp_path):
    """The same script sees torch once a run path imports it (the check above is not vacuous)."""
    script = "import lora_lab.nodes.sampling.samplers\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", script, "run", str(WORKFLOWS / "demo_txt2img.json"),
                           "--validate-only", "--quiet", "--models-dir", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300, env=ENV, check=False)
    assert "torch" in json.loads(proc.stdout.strip().splitlines()[-1])["loaded"]
