"""Stacks of LoRAs: the text syntax, name resolution, trigger words, and new handles.

Stack text, one LoRA per line:   name[:unet_strength[:text_strength]]
                                 or a prompt tag (below)
                                 # a commented line is off
Prompt tags, as A1111 reads them (extensions-builtin/Lora, extra_networks.py):
    <lora:name>  <lora:name:te>  <lora:name:te:unet>  <lora:name:te:unet:dyn>
    named arguments in any position: te=, unet=, dyn=, and lbw= (the LoRA Block Weight
    extension's preset or vector, e.g. <lora:name:1:lbw=OUTALL>);  <lyco:...> is the same tag.
    te defaults to 1, unet to te. dyn (a DyLoRA rank) is read and, as in A1111's own loader,
    not applied. Names are file names without extension, found anywhere under the loras
    folders, or a LoRA's ss_output_name (see io/model_names.py).
LORA_STACK edges (other packs' convention): [(lora_name, model_strength, clip_strength), ...]
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..io import notices
from ..io.checks import STRENGTH_MAX, check_strength
from ..io.errors import LoraLabError, NodeInputError
from ..io.model_names import find_model_file
from ..io.paths import LORA_EXTENSIONS, confined

log = logging.getLogger(__name__)

# A1111's extra-network syntax <kind:arg:arg...> for the two kinds that name a LoRA.
PROMPT_LORA = re.compile(r"<(lora|lyco):([^>]+)>")
NAMED_ARGS = ("te", "unet", "dyn", "lbw")


@dataclass(frozen=True)
class StackEntry:
    name: str
    strength_unet: float = 1.0
    strength_text: float = 1.0
    block_weights: str = ""  # an LBW preset or vector for this LoRA only ('' = the node's)
    dyn: int | None = None  # A1111's dyn argument (read, not applied, as in A1111)


def _num(value: str, node: str, line: str, input_name: str = "loras") -> float:
    """A strength of the stack text or a prompt tag: a number within the one strength range."""
    return check_strength(value.strip(), node, input_name, "strength", shown=line)


def _split_args(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """A1111's ExtraNetworkParams: 'key=value' items are named, the others positional."""
    positional, named = [], {}
    for item in items:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0].strip()] = parts[1].strip()
        else:
            positional.append(item.strip())
    return positional, named


def parse_tag(body: str, node: str, tag: str, input_name: str = "loras") -> StackEntry:
    """The inside of <lora:...> (after 'lora:') -> an entry, with A1111's defaults."""
    positional, named = _split_args(body.split(":"))
    unknown = sorted(set(named) - set(NAMED_ARGS))
    if unknown:
        raise NodeInputError(node, input_name, tag, f"unknown named argument(s) {unknown}; "
                             f"expected {', '.join(a + '=' for a in NAMED_ARGS)}")
    if not positional or not positional[0]:
        raise NodeInputError(node, input_name, tag, "the tag names no LoRA")
    if len(positional) > 4:
        raise NodeInputError(node, input_name, tag, "expected <lora:name[:te[:unet[:dyn]]]>")
    num = lambda v: _num(v, node, tag, input_name)  # noqa: E731
    te = num(positional[1]) if len(positional) > 1 and positional[1] else 1.0
    te = num(named["te"]) if "te" in named else te
    unet = num(positional[2]) if len(positional) > 2 and positional[2] else te
    unet = num(named["unet"]) if "unet" in named else unet
    dyn_text = named.get("dyn", positional[3] if len(positional) > 3 else "")
    dyn = None
    if dyn_text:
        try:
            dyn = int(dyn_text)
        except ValueError:
            raise NodeInputError(node, input_name, tag, f"dyn {dyn_text!r} is not a whole number") from None
        log.info("%s: %s: dyn=%d is not applied (A1111's LoRA loader ignores it too)", node, tag, dyn)
    return StackEntry(positional[0], unet, te, named.get("lbw", ""), dyn)


def parse_stack_text(text: str, node: str = "LoraLabLoraStack", input_name: str = "loras") -> list[StackEntry]:
    """Parse the multiline stack text; order is kept."""
    out = []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = PROMPT_LORA.fullmatch(line)
        if m:
            out.append(parse_tag(m.group(2), node, line, input_name))
            continue
        name, *nums = line.split(":")
        if len(nums) > 2:
            raise NodeInputError(node, input_name, line, "expected name[:unet_strength[:text_strength]]")
        unet = _num(nums[0], node, line, input_name) if nums and nums[0].strip() else 1.0
        text_s = _num(nums[1], node, line, input_name) if len(nums) > 1 and nums[1].strip() else unet
        out.append(StackEntry(name.strip(), unet, text_s))
    return out


def parse_lora_stack(lora_stack, node: str, input_name: str = "lora_stack") -> list[StackEntry]:
    """A LORA_STACK edge (other packs' convention: (lora_name, model_strength, clip_strength)
    tuples) as entries; the strengths' range is checked by add_loras."""
    out = []
    for item in lora_stack or []:
        try:
            name, su, st = item
            out.append(StackEntry(str(name), float(su), float(st)))
        except (TypeError, ValueError):
            raise NodeInputError(node, input_name, item, "expected (lora_name, model_strength, clip_strength)") from None
    return out


def strip_prompt_loras(prompt: str, node: str = "LoraLabSampler",
                       input_name: str = "prompt") -> tuple[str, list[StackEntry]]:
    """Remove <lora:...>/<lyco:...> tags from a prompt; return the text and the LoRAs (A1111 semantics)."""
    entries = [parse_tag(m.group(2), node, m.group(0), input_name) for m in PROMPT_LORA.finditer(prompt or "")]
    text = PROMPT_LORA.sub("", prompt or "")
    return re.sub(r"[ \t]{2,}", " ", text).strip(), entries


def resolve_lora(name: str) -> Path:
    """A LoRA by path inside the loras folder(s), by file name anywhere under them, or by alias."""
    return find_model_file("loras", name, LORA_EXTENSIONS, alias_key="ss_output_name")


def civitai_trained_words(path: Path) -> list[str]:
    """`trainedWords` of the Civitai helper's `<stem>.civitai.info` sidecar (its model-version JSON)."""
    info = path.with_name(path.stem + ".civitai.info")
    if not info.is_file():
        return []
    try:
        words = json.loads(info.read_text(encoding="utf-8")).get("trainedWords")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        log.warning("%s: unreadable civitai info", info.name)
        return []
    return [str(w).strip() for w in words if str(w).strip()] if isinstance(words, list) else []


def trigger_words(path: Path, metadata: dict, top: int = 10) -> str:
    """Trigger words: modelspec.trigger_phrase, an A1111 sidecar .json's "activation text",
    a sidecar .txt, civitai's `.civitai.info` trainedWords, or (when none of those) the most
    frequent tags of ss_tag_frequency (kohya)."""
    words = []
    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        words.append(phrase.strip())
    side_json = confined("loras", path.with_suffix(".json"))  # None: absent, or a link out of the folder
    if side_json is not None:
        try:
            act = json.loads(side_json.read_text(encoding="utf-8")).get("activation text", "")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            act = ""
            log.warning("%s: unreadable sidecar json", side_json.name)
        if act:
            words.append(act.strip())
    side_txt = confined("loras", path.with_suffix(".txt"))
    if side_txt is not None:
        words.append(side_txt.read_text(encoding="utf-8", errors="replace").strip()[:4000])
    words += civitai_trained_words(path)
    if not words and metadata.get("ss_tag_frequency"):
        try:
            freq = json.loads(metadata["ss_tag_frequency"])
        except json.JSONDecodeError:
            freq = {}
        counts: dict = {}
        for tags in freq.values() if isinstance(freq, dict) else []:
            for tag, n in (tags or {}).items():
                counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
        words += [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top] if t]
    seen, out = set(), []
    for w in words:
        if w and w not in seen:
            seen.add(w)
            out.append(w)
    return ", ".join(out)


def _unet_only(handle, raw):
    """`raw` without the layers whose every target is a text encoder's."""
    import dataclasses

    from .patcher import state_for

    index = state_for(handle).index
    keep = {n: a for n, a in raw.adapters.items()
            if not (index.lookup(n) and all(t.component != "unet" for t in index.lookup(n)))}
    return raw if len(keep) == len(raw.adapters) else dataclasses.replace(raw, adapters=keep)


def add_loras(handle, entries: list[StackEntry], node: str, input_name: str = "loras",
              block_weights: str = "", text: bool = True, strength_limit: float = STRENGTH_MAX) -> tuple:
    """A new handle with `entries` appended to its patches, plus the joined trigger words.

    Each LoRA is matched against the model now, so a LoRA for another family fails here with
    both families named, and a partial match is logged with its count and first keys.
    text=False (a UNet without its text encoders, e.g. ComfyUI's model-only use): the file's
    text-encoder layers are left out before matching (neither applied nor checked).
    """
    from .block_weights import parse_block_weights
    from .lora_formats import read_lora
    from .patcher import LoraPatch, match_report

    try:
        bw = parse_block_weights(block_weights, handle.family)
    except ValueError as e:
        raise NodeInputError(node, "block_weights", block_weights, str(e)) from None
    patches, triggers = list(handle.patches), []
    for e in entries:  # LORA_STACK edges, sweeps and the Python API come here unchecked
        for value, which in ((e.strength_unet, "UNet"), (e.strength_text, "text")):
            check_strength(value, node, input_name, f"LoRA {e.name!r}: {which} strength", shown=e.name,
                           limit=strength_limit)
    for e in entries:
        entry_bw = bw
        if e.block_weights:
            try:
                entry_bw = parse_block_weights(e.block_weights, handle.family)
            except ValueError as err:
                raise NodeInputError(node, input_name, f"{e.name} lbw={e.block_weights}", str(err)) from None
        try:
            path = resolve_lora(e.name)
            raw = read_lora(path)
            if not text:
                raw = _unet_only(handle, raw)
            report = match_report(handle, raw)
        except LoraLabError as err:
            raise NodeInputError(node, input_name, e.name, str(err)) from None
        if not report.adapters:
            raise NodeInputError(node, input_name, e.name,
                                 f"no layer of this {handle.label} model matches the file "
                                 f"({report.total} layers, e.g. {list(report.unmatched[:3])})")
        if report.unmatched or raw.unknown_keys:
            notices.warn(log, f"{node}: LoRA {e.name!r}: {len(report.adapters)} of {report.total} layers matched; "
                              f"unmatched: {list(report.unmatched[:5])}; unknown keys: {list(raw.unknown_keys[:5])}")
        patches.append(LoraPatch(e.name, raw, e.strength_unet, e.strength_text, entry_bw))
        tw = trigger_words(path, raw.metadata)
        if tw:
            triggers.append(tw)
    return handle.with_patches(tuple(patches)), ", ".join(triggers)
