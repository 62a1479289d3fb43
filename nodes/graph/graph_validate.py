"""Whole-graph validation before anything runs, with ComfyUI's rules (execution.validate_inputs).

Every node's type must be known (a ComfyUI core node is reported as needing ComfyUI). The
graph needs an output node (OUTPUT_NODE = True); the outputs and everything they depend on
are then checked: required inputs present, links well formed and pointing at existing
nodes and output slots, link types compatible ("*" and comma-separated unions as in
ComfyUI), constants convertible to INT / FLOAT / STRING / BOOLEAN, inside min/max, in the
combo's list, VALIDATE_INPUTS accepting them, and no dependency cycle. All problems are
collected and raised together in one GraphValidationError; each names the node id, title,
input and value.

Differences from ComfyUI, on purpose: every problem fails the whole graph (ComfyUI runs the
outputs that validated); BOOLEAN accepts only booleans, 0/1 and "true"/"false"-like strings
(ComfyUI's bool("false") is True).
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field

from ..io.errors import LoraLabError
from .workflow_widgets import combo_options, spec_parts

HIDDEN_VALUES = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT")

# ComfyUI core nodes: they need ComfyUI itself (its model management, samplers, VAE...).
COMFYUI_ONLY_NODES = frozenset("""
KSampler KSamplerAdvanced SamplerCustom SamplerCustomAdvanced KSamplerSelect BasicScheduler
KarrasScheduler ExponentialScheduler SDTurboScheduler BasicGuider CFGGuider DualCFGGuider
RandomNoise DisableNoise CheckpointLoaderSimple CheckpointLoader unCLIPCheckpointLoader
DiffusersLoader CheckpointSave ImageOnlyCheckpointLoader VAELoader UNETLoader CLIPLoader
DualCLIPLoader TripleCLIPLoader CLIPVisionLoader CLIPVisionEncode StyleModelLoader
StyleModelApply GLIGENLoader GLIGENTextBoxApply HypernetworkLoader UpscaleModelLoader
ImageUpscaleWithModel LoraLoader LoraLoaderModelOnly CLIPTextEncode CLIPTextEncodeSDXL
CLIPTextEncodeSDXLRefiner CLIPSetLastLayer ConditioningCombine ConditioningAverage
ConditioningConcat ConditioningSetArea ConditioningSetAreaPercentage ConditioningSetMask
ConditioningZeroOut ConditioningSetTimestepRange ControlNetLoader DiffControlNetLoader
ControlNetApply ControlNetApplyAdvanced VAEDecode VAEEncode VAEDecodeTiled VAEEncodeTiled
VAEEncodeForInpaint InpaintModelConditioning EmptyLatentImage LatentUpscale LatentUpscaleBy
LatentComposite LatentBlend LatentFromBatch RepeatLatentBatch SetLatentNoiseMask LatentRotate
LatentFlip LatentCrop SaveLatent LoadLatent SaveImage PreviewImage LoadImage LoadImageMask
LoadImageOutput ImageScale ImageScaleBy ImageScaleToTotalPixels ImageInvert ImageBatch
ImagePadForOutpaint EmptyImage ImageCrop ImageBlur ImageSharpen ImageBlend ImageQuantize
SaveAnimatedWEBP SaveAnimatedPNG FreeU FreeU_V2 ModelMergeSimple ModelMergeBlocks
CLIPMergeSimple ModelSamplingDiscrete ModelSamplingContinuousEDM RescaleCFG PerturbedAttentionGuidance
PrimitiveInt PrimitiveFloat PrimitiveString PrimitiveStringMultiline PrimitiveBoolean
""".split())

# LoRA Lab's own nodes on ComfyUI's MODEL / CLIP / VAE types (nodes/defs/comfy_lora_nodes.py):
# registered inside ComfyUI only, since their inputs are ComfyUI's objects.
COMFYUI_TYPED_NODES = frozenset({"LoraLabLoraLoaderModelClip", "LoraLabLoraStackModelClip",
                                 "LoraLabPromptLoraTags", "LoraLabToComfy", "LoraLabFromComfy"})


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Problem:
    kind: str  # unknown_node_type, comfyui_only, bad_node, no_outputs, missing_input, bad_link,
    #            type_mismatch, invalid_value, out_of_range, not_in_list, custom_validation, cycle
    message: str
    node_id: str | None = None
    title: str | None = None
    class_type: str | None = None
    input: str | None = None
    value: object = None

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id}")
            if self.title and self.title != self.class_type:
                where.append(f'"{self.title}"')
            if self.class_type:
                where.append(f"({self.class_type})")
        if self.input is not None:
            where.append(f"input {self.input!r} = {_short(self.value)}")
        return (" ".join(where) + ": " if where else "") + self.message

    def to_dict(self) -> dict:
        value = self.value if isinstance(self.value, (str, int, float, bool, type(None), list, dict)) \
            else repr(self.value)
        return {"kind": self.kind, "node_id": self.node_id, "title": self.title, "class_type": self.class_type,
                "input": self.input, "value": value, "message": self.message, "text": str(self)}


class GraphValidationError(LoraLabError):
    """The graph cannot run; `problems` lists every reason found."""

    def __init__(self, problems: list[Problem], supported=None):
        self.problems = list(problems)
        lines = [f"graph failed validation ({len(self.problems)} problem{'s' * (len(self.problems) != 1)}):"]
        lines += [f"  - {p}" for p in self.problems]
        if supported and any(p.kind in ("comfyui_only", "unknown_node_type") for p in self.problems):
            lines.append("  the headless runner runs these node types: " + ", ".join(sorted(supported, key=str.lower)))
        super().__init__("\n".join(lines))


@dataclass
class ValidatedGraph:
    prompt: dict  # copy of the input with constants converted (INT → int, ...) and unboxed
    outputs: list[str]  # output node ids
    order: list[str]  # the nodes that run, dependencies first
    registry: dict = field(repr=False, default_factory=dict)


def node_sort_key(node_id: str):
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(node_id).split(":"))


def is_link(value) -> bool:
    return isinstance(value, list)


def types_compatible(received, wanted) -> bool:
    """ComfyUI's validate_node_input (non-strict): '*' matches all, unions must overlap."""
    if received == wanted:
        return True
    if received == "*" or wanted == "*":
        return True
    if isinstance(received, (list, tuple)) and (wanted == "COMBO" or isinstance(wanted, (list, tuple))):
        return True  # a combo list output feeding a combo input
    if wanted == "COMBO" and isinstance(received, str) and received == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    a = {t.strip() for t in received.split(",")}
    b = {t.strip() for t in wanted.split(",")}
    return "*" in a or "*" in b or bool(a & b)


class _Validator:
    def __init__(self, prompt: dict, registry: dict):
        self.prompt = prompt
        self.registry = registry
        self.problems: list[Problem] = []

    def problem(self, kind, message, node_id=None, input=None, value=None):
        node = self.prompt.get(node_id) if node_id is not None else None
        title = class_type = None
        if isinstance(node, dict):
            class_type = node.get("class_type")
            title = (node.get("_meta") or {}).get("title") or class_type
        self.problems.append(Problem(kind, message, node_id, title, class_type, input, value))

    def check_types(self) -> None:
        for node_id in sorted(self.prompt, key=node_sort_key):
            node = self.prompt[node_id]
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                self.problems.append(Problem("bad_node", "has no class_type", node_id))
                continue
            class_type = node["class_type"]
            if class_type in self.registry:
                continue
            self.unsupported(node_id, class_type)

    def unsupported(self, node_id, class_type: str) -> None:
        from .known_packs import pack_of

        if class_type in COMFYUI_TYPED_NODES:
            self.problem("comfyui_only", f"{class_type} works on ComfyUI's MODEL / CLIP objects; only ComfyUI can run "
                         "it (queue this graph in ComfyUI, or use the runner's LoraLoader / LORA_LAB_MODEL nodes)",
                         node_id)
        elif class_type in COMFYUI_ONLY_NODES:
            self.problem("comfyui_only", f"{class_type} is a ComfyUI core node the headless runner does not run "
                         "(queue this graph in ComfyUI, or rebuild it from the node types listed below)", node_id)
        elif pack_of(class_type):
            self.problem("unknown_node_type", f"{class_type} comes from the custom node pack {pack_of(class_type)}; "
                         "the headless runner does not run other packs' nodes (run this graph in ComfyUI)", node_id)
        else:
            close = difflib.get_close_matches(class_type, list(self.registry), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            self.problem("unknown_node_type", f"unknown node type {class_type!r}{hint}", node_id)

    def runnable(self, node_id) -> bool:
        node = self.prompt.get(node_id)
        return isinstance(node, dict) and node.get("class_type") in self.registry

    def check_node(self, node_id: str) -> None:
        node = self.prompt[node_id]
        cls = self.registry[node["class_type"]]
        try:
            types = cls.INPUT_TYPES()
        except Exception as e:  # a node class that cannot describe itself
            self.problem("bad_node", f"INPUT_TYPES() failed: {e}", node_id)
            return
        inputs = node["inputs"]
        validate_fn = getattr(cls, "VALIDATE_INPUTS", None)
        custom_args, custom_kwargs = [], False
        if validate_fn is not None:
            spec = inspect.getfullargspec(validate_fn)
            custom_args, custom_kwargs = spec.args, spec.varkw is not None
        received_types = {}
        for section in ("required", "optional"):
            for name, spec in (types.get(section) or {}).items():
                if name not in inputs:
                    if section == "required":
                        self.problem("missing_input", "required input is missing", node_id, name, None)
                    continue
                value = inputs[name]
                type_, opts = spec_parts(spec)
                if is_link(value):
                    received = self.check_link(node_id, name, value, type_, "input_types" in custom_args)
                    if received is not None:
                        received_types[name] = received
                    continue
                self.check_constant(node_id, name, value, type_, opts,
                                    skip_limits=name in custom_args or custom_kwargs)
        if validate_fn is not None:
            self.run_custom(node_id, cls, validate_fn, types, custom_args, custom_kwargs, received_types)

    def check_link(self, node_id, name, value, wanted, skip_type: bool):
        if len(value) != 2 or not isinstance(value[1], int) or isinstance(value[1], bool):
            self.problem("bad_link", "a link must be [node_id, output_index]", node_id, name, value)
            return None
        src, slot = str(value[0]), value[1]
        if src not in self.prompt:
            self.problem("bad_link", f"linked to node {src}, which is not in the graph", node_id, name, value)
            return None
        if not self.runnable(src):
            return None  # its unknown type is already reported
        src_cls = self.registry[self.prompt[src]["class_type"]]
        returns = tuple(getattr(src_cls, "RETURN_TYPES", ()))
        if not 0 <= slot < len(returns):
            self.problem("bad_link", f"node {src} ({self.prompt[src]['class_type']}) has {len(returns)} "
                         f"output(s); output {slot} does not exist", node_id, name, value)
            return None
        received = returns[slot]
        if not skip_type and not types_compatible(received, wanted):
            want = "COMBO" if isinstance(wanted, (list, tuple)) else wanted
            got = "COMBO" if isinstance(received, (list, tuple)) else received
            self.problem("type_mismatch", f"link type mismatch: output {slot} of node {src} "
                         f"({self.prompt[src]['class_type']}) is {got}, the input takes {want}",
                         node_id, name, value)
        return received

    def check_constant(self, node_id, name, value, type_, opts, skip_limits: bool):
        inputs = self.prompt[node_id]["inputs"]
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        try:
            if type_ == "INT":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError("not a whole number")
                value = int(value)
            elif type_ == "FLOAT":
                value = float(value)
                if math.isnan(value):
                    raise ValueError("NaN")
            elif type_ == "STRING":
                if isinstance(value, (dict, list)):
                    raise ValueError("not text")
                value = str(value)
            elif type_ == "BOOLEAN":
                value = _to_bool(value)
        except (TypeError, ValueError) as e:
            self.problem("invalid_value", f"not a valid {type_} value ({e})", node_id, name, inputs[name])
            return
        if isinstance(type_, str) and type_ not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "*"):
            self.problem("invalid_value", f"takes a link of type {type_}, not a constant", node_id, name, value)
            return
        inputs[name] = value
        if skip_limits:
            return
        if type_ in ("INT", "FLOAT"):
            if "min" in opts and value < opts["min"]:
                self.problem("out_of_range", f"value {value} smaller than min of {opts['min']}", node_id, name, value)
            elif "max" in opts and value > opts["max"]:
                self.problem("out_of_range", f"value {value} bigger than max of {opts['max']}", node_id, name, value)
        if isinstance(type_, (list, tuple)) or type_ == "COMBO":
            if type_ == "COMBO" and opts.get("remote"):
                return
            options = combo_options(type_, opts)
            multi = opts.get("multiselect") or opts.get("multi_select")
            bad = [v for v in value if v not in options] if multi and isinstance(value, list) \
                else ([] if _in_options(value, options) else [value])
            if bad:
                shown = str(options) if len(options) <= 20 else f"(list of {len(options)} options)"
                self.problem("not_in_list", f"{', '.join(repr(v) for v in bad)} not in {shown}", node_id, name, value)

    def run_custom(self, node_id, cls, fn, types, args, kwargs, received_types):
        inputs = self.prompt[node_id]["inputs"]
        declared = {**(types.get("required") or {}), **(types.get("optional") or {})}
        call = {k: v for k, v in inputs.items() if k in declared and not is_link(v) and (kwargs or k in args)}
        if "input_types" in args:
            call["input_types"] = received_types
        try:
            result = fn(**call)
        except Exception as e:
            self.problem("custom_validation", f"VALIDATE_INPUTS raised {type(e).__name__}: {e}", node_id)
            return
        if result is not True:
            detail = "" if result is False else f": {result}"
            name = next(iter(call), None) if len(call) == 1 else None
            self.problem("custom_validation", f"custom validation failed{detail}", node_id, name,
                         call.get(name) if name else None)

    def execution_order(self, outputs: list[str]) -> list[str]:
        """Dependencies first; cycles reported. Only the outputs and what they need."""
        order, state = [], {}  # state: 1 visiting, 2 done

        def deps(nid):
            node = self.prompt[nid]
            for v in node["inputs"].values():
                if is_link(v) and len(v) == 2 and str(v[0]) in self.prompt and self.runnable(str(v[0])):
                    yield str(v[0])

        for root in outputs:
            if state.get(root):
                continue
            stack = [(root, iter(deps(root)))]
            path = [root]
            state[root] = 1
            while stack:
                nid, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    path.pop()
                    state[nid] = 2
                    order.append(nid)
                elif state.get(nxt) == 1:
                    cycle = path[path.index(nxt):] + [nxt]
                    self.problem("cycle", "dependency cycle: " + " -> ".join(
                        f"{c} ({self.prompt[c]['class_type']})" for c in cycle), nxt)
                elif not state.get(nxt):
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append((nxt, iter(deps(nxt))))
        return order


def _to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError("expected true or false")


def _in_options(value, options) -> bool:
    try:
        return value in options
    except TypeError:
        return False


def output_node_ids(prompt: dict, registry: dict) -> list[str]:
    return sorted((nid for nid, n in prompt.items() if isinstance(n, dict)
                   and getattr(registry.get(n.get("class_type")), "OUTPUT_NODE", False) is True),
                  key=node_sort_key)


def validate_graph(prompt: dict, registry: dict) -> ValidatedGraph:
    """Check the whole API graph against `registry` (class type -> node class, handed in by
    the caller); return it normalised with its execution order, or raise
    GraphValidationError listing every problem."""
    import copy

    if not isinstance(prompt, dict) or not prompt:
        raise GraphValidationError([Problem("bad_node", "the graph is empty or not an object of nodes")])
    v = _Validator(copy.deepcopy(prompt), registry)
    v.check_types()
    for node in v.prompt.values():
        if isinstance(node, dict) and not isinstance(node.get("inputs", {}), dict):
            node["inputs"] = {}
        elif isinstance(node, dict):
            node.setdefault("inputs", {})
    outputs = output_node_ids(v.prompt, registry)
    if not outputs and not v.problems:
        v.problems.append(Problem("no_outputs", "the graph has no output node (e.g. a Save node), so nothing "
                                  "would run"))
    # the outputs and their (runnable) dependencies
    needed, stack = set(), list(outputs)
    while stack:
        nid = stack.pop()
        if nid in needed or not v.runnable(nid):
            continue
        needed.add(nid)
        stack.extend(str(x[0]) for x in v.prompt[nid]["inputs"].values()
                     if is_link(x) and x and str(x[0]) in v.prompt)
    for nid in sorted(needed, key=node_sort_key):
        v.check_node(nid)
    order = v.execution_order(outputs)
    if v.problems:
        raise GraphValidationError(v.problems, supported=registry)
    return ValidatedGraph(v.prompt, outputs, order, registry)
