"""`lora-lab merge-json SUMMARY...`: the `--json` summaries of the shards of one run list
(`lora-lab run ... --shard I/N --json`) as the one summary a sequential run would print.

Checked: every file is a shard summary, all of the same N and run list (its length and hash:
the same graphs, --set and --sweep), each shard
0..N-1 present exactly once, each run of the list present exactly once. Runs come in plan
order; the status is the worst one (interrupted > failed > ok); cache counts add up; `seconds`
is the longest shard (they run side by side) and `shard_seconds` lists each.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from .run_plan import UsageError

log = logging.getLogger(__name__)

_RANK = {"ok": 0, "failed": 1, "interrupted": 2}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("summaries", nargs="+", metavar="SUMMARY",
                   help="the --json output of each `lora-lab run ... --shard I/N` job")
    p.add_argument("-o", "--output", help="write the merged summary here (atomically); default stdout")


def _read(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable JSON summary ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("shard"), dict) or not isinstance(doc.get("runs"), list):
        raise UsageError(f"{path}: not the --json summary of a `lora-lab run --shard I/N` job")
    return doc


def merge_summaries(docs: dict[str, dict]) -> dict:
    """{file name: shard summary} -> one summary; UsageError names what does not fit."""
    counts = {(d["shard"].get("count"), d["shard"].get("runs_total"), d["shard"].get("plan")) for d in docs.values()}
    if len(counts) != 1:
        raise UsageError("the summaries come from different run lists (shard count, runs, plan hash): "
                         + ", ".join(map(str, sorted(counts, key=str))))
    ((count, total, _plan),) = counts
    by_index: dict = {}
    for name, d in docs.items():
        i = d["shard"].get("index")
        if i in by_index:
            raise UsageError(f"shard {i}/{count} given twice: {by_index[i]} and {name}")
        by_index[i] = name
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise UsageError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)} of {count}")
    runs = sorted((r for d in docs.values() for r in d["runs"]), key=lambda r: r.get("index", -1))
    indices = [r.get("index") for r in runs]
    if indices != list(range(total)):
        dup = sorted({i for i in indices if indices.count(i) > 1})
        raise UsageError(f"the shards do not cover runs 0..{total - 1} once each"
                         + (f" (given more than once: {dup})" if dup else f" ({len(runs)} runs given)"))
    worst = max((d for d in docs.values()), key=lambda d: _RANK.get(d.get("status"), 2))
    return {
        "status": worst.get("status"),
        "exit_code": worst.get("exit_code"),
        "runs": runs,
        "cache": {k: sum(d.get("cache", {}).get(k, 0) for d in docs.values()) for k in ("hits", "misses")},
        "seconds": max(d.get("seconds", 0.0) for d in docs.values()),
        "shard_seconds": [docs[by_index[i]].get("seconds", 0.0) for i in range(count)],
    }


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(args, registry=None) -> int:
    try:
        merged = merge_summaries({p: _read(p) for p in args.summaries})
    except UsageError as e:
        print(f"lora-lab merge-json: {e}", file=sys.stderr)
        return 2
    text = json.dumps(merged, indent=2) + "\n"
    if args.output:
        _write_atomic(Path(args.output), text)
        log.info("merged %d shard summaries (%d runs) into %s", len(args.summaries), len(merged["runs"]), args.output)
    else:
        sys.stdout.write(text)
    return 0 if merged["status"] == "ok" else int(merged["exit_code"] or 1)
