"""UI graphs that exercise the frontend's UI → API conversion (graphToPrompt): subgraphs (nested,
inner ids that collide with root ids and with each other, two instances of one definition,
promoted widgets, an instance whose saved inputs lack a subgraph input), PrimitiveNode values
(also through reroutes), Reroute chains, bypass (mode 4) and mute (mode 2) of plain nodes, of
subgraph instances and of nodes inside subgraphs, and the core Primitive* nodes.

Built from ComfyUI 0.3.64's core nodes only, so that the runner's own core-node registry converts
them without ComfyUI. Written in the shape the editor saves (links as arrays at the root, as
objects in subgraph definitions; widget sockets listed only where linked).

    python tests/graph/frontend_cases.py            # (re)write tests/graph/frontend_fixtures/*.ui.json

The matching *.api.json are what the frontend's own `app.graphToPrompt()` returned for each,
captured with tests/graph/frontend_capture.py (see its docstring).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent / "frontend_fixtures"
PROMOTED: dict[str, set] = {}  # definition id -> its inputs that show a widget (the builder knows)

# Saved slots of the core nodes used: (link inputs, outputs, widget values).
SPECS = {
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
                               ["v1-5-pruned-emaonly-fp16.safetensors"]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], ["a photo"]),
    "CLIPSetLastLayer": ([("clip", "CLIP")], [("CLIP", "CLIP")], [-1]),
    "LoraLoader": ([("model", "MODEL"), ("clip", "CLIP")], [("MODEL", "MODEL"), ("CLIP", "CLIP")],
                   ["lora-lab-example-sd15.safetensors", 1.0, 1.0]),
    "LoraLoaderModelOnly": ([("model", "MODEL")], [("MODEL", "MODEL")], ["lora-lab-example-sd15.safetensors", 0.25]),
    "EmptyLatentImage": ([], [("LATENT", "LATENT")], [64, 64, 1]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")], [42, "fixed", 4, 7.0, "euler", "normal", 1.0]),
    "LatentUpscaleBy": ([("samples", "LATENT")], [("LATENT", "LATENT")], ["nearest-exact", 1.5]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")], None),
    "SaveImage": ([("images", "IMAGE")], [], ["ComfyUI"]),
    "PreviewImage": ([("images", "IMAGE")], [], None),
    "PrimitiveInt": ([], [("INT", "INT")], [7, "fixed"]),
    "PrimitiveFloat": ([], [("FLOAT", "FLOAT")], [0.5]),
    "PrimitiveString": ([], [("STRING", "STRING")], ["from a primitive"]),
    "Note": ([], [], ["a note"]),
}


class Level:
    """One graph level (the root or a subgraph definition) being built."""

    def __init__(self, root: bool, subgraph_inputs=(), subgraph_outputs=()):
        self.root = root
        self.nodes: list[dict] = []
        self.links: list = []
        self.link_id = 0
        self.inputs = [{"id": f"in-{i}", "name": n, "type": t, "linkIds": [], "localized_name": n}
                       for i, (n, t) in enumerate(subgraph_inputs)]
        self.outputs = [{"id": f"out-{i}", "name": n, "type": t, "linkIds": [], "localized_name": n}
                        for i, (n, t) in enumerate(subgraph_outputs)]

    def node(self, id, type, widgets="default", mode=0, title=None, inputs=None, outputs=None, properties=None):
        spec_in, spec_out, spec_w = SPECS.get(type, ([], [], None))
        n = {"id": id, "type": type, "pos": [220 * (len(self.nodes) % 6), 160 * (len(self.nodes) // 6)],
             "size": [200, 100], "flags": {}, "order": len(self.nodes), "mode": mode,
             "inputs": [{"name": a, "type": b, "link": None} for a, b in (inputs if inputs is not None else spec_in)],
             "outputs": [{"name": a, "type": b, "links": []} for a, b in (outputs if outputs is not None else spec_out)],
             "properties": {"Node name for S&R": type, **(properties or {})}}
        w = spec_w if widgets == "default" else widgets
        if w is not None:
            n["widgets_values"] = list(w)
        if title:
            n["title"] = title
        self.nodes.append(n)
        return n

    def widget_input(self, node: dict, name: str, type_: str) -> int:
        """A widget socket (what the editor saves for a widget that has a link); its slot index."""
        node["inputs"].append({"name": name, "type": type_, "widget": {"name": name}, "link": None})
        return len(node["inputs"]) - 1

    def link(self, a, a_slot: int, b, b_slot: int) -> int:
        """a / b: a node dict, or "in" / "out" (the subgraph's input / output node)."""
        self.link_id += 1
        lid = self.link_id
        if a == "in":
            origin, type_ = -10, self.inputs[a_slot]["type"]
            self.inputs[a_slot]["linkIds"].append(lid)
        else:
            origin, type_ = a["id"], a["outputs"][a_slot]["type"]
            a["outputs"][a_slot]["links"].append(lid)
        if b == "out":
            target = -20
            self.outputs[b_slot]["linkIds"].append(lid)
        else:
            target = b["id"]
            b["inputs"][b_slot]["link"] = lid
        if self.root:
            self.links.append([lid, origin, a_slot, target, b_slot, type_])
        else:
            self.links.append({"id": lid, "origin_id": origin, "origin_slot": a_slot, "target_id": target,
                               "target_slot": b_slot, "type": type_})
        return lid

    def instance(self, id, definition: dict, mode=0, widgets=None, title=None, drop_inputs=(), widget_keys=True):
        """A node of a subgraph definition, its slots as the editor saves them (promoted inputs
        with their `widget`, unless widget_keys=False: an older save)."""
        promoted = PROMOTED.get(definition["id"], set()) if widget_keys else set()
        n = {"id": id, "type": definition["id"], "pos": [0, 400 + 40 * id], "size": [240, 120], "flags": {},
             "order": len(self.nodes), "mode": mode,
             "inputs": [{"name": s["name"], "type": s["type"], "link": None}
                        | ({"widget": {"name": s["name"]}} if s["name"] in promoted else {})
                        for s in definition["inputs"] if s["name"] not in drop_inputs],
             "outputs": [{"name": s["name"], "type": s["type"], "links": []} for s in definition["outputs"]],
             "properties": {}}
        if widgets is not None:
            n["widgets_values"] = list(widgets)
        if title:
            n["title"] = title
        self.nodes.append(n)
        return n

    def definition(self, uuid: str, name: str) -> dict:
        nodes = self.nodes
        PROMOTED[uuid] = {s["name"] for s in self.inputs if s.get("_widget")}
        return {"id": uuid, "version": 1, "state": {"lastGroupId": 0, "lastNodeId": max([n["id"] for n in nodes] or [0]),
                                                    "lastLinkId": self.link_id, "lastRerouteId": 0},
                "revision": 0, "config": {}, "name": name,
                "inputNode": {"id": -10, "bounding": [-300, 0, 120, 60]},
                "outputNode": {"id": -20, "bounding": [900, 0, 120, 60]},
                "inputs": [{k: v for k, v in s.items() if k != "_widget"} | {"pos": [-200, 20 + 20 * i]}
                           for i, s in enumerate(self.inputs)],
                "outputs": [s | {"pos": [920, 20 + 20 * i]} for i, s in enumerate(self.outputs)],
                "widgets": [], "nodes": nodes, "groups": [], "links": self.links, "extra": {}}

    def workflow(self, subgraphs=()) -> dict:
        out = {"id": "00000000-0000-4000-8000-000000000001", "revision": 0,
               "last_node_id": max(n["id"] for n in self.nodes), "last_link_id": self.link_id,
               "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
               "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
        if subgraphs:
            out["definitions"] = {"subgraphs": list(subgraphs)}
        return out


def _pipeline(g: Level, start: int, model_src=None, clip_src=None):
    """Checkpoint → two prompts → KSampler → decode → save, node ids start.. (the default graph's shape)."""
    ckpt = g.node(start, "CheckpointLoaderSimple")
    pos = g.node(start + 1, "CLIPTextEncode", ["a lighthouse at dusk"])
    neg = g.node(start + 2, "CLIPTextEncode", ["blurry"], title="Negative")
    lat = g.node(start + 3, "EmptyLatentImage")
    ks = g.node(start + 4, "KSampler")
    dec = g.node(start + 5, "VAEDecode")
    save = g.node(start + 6, "SaveImage")
    m, m_slot = model_src or (ckpt, 0)
    c, c_slot = clip_src or (ckpt, 1)
    g.link(m, m_slot, ks, 0)
    g.link(c, c_slot, pos, 0)
    g.link(c, c_slot, neg, 0)
    g.link(pos, 0, ks, 1)
    g.link(neg, 0, ks, 2)
    g.link(lat, 0, ks, 3)
    g.link(ks, 0, dec, 0)
    g.link(ckpt, 2, dec, 1)
    g.link(dec, 0, save, 0)
    return ckpt, pos, neg, lat, ks, dec, save


def lora_subgraph(uuid="5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a01", first_id=1) -> dict:
    """MODEL, CLIP in → LoraLoader → CLIPSetLastLayer → MODEL, CLIP out; strength_model promoted
    (a subgraph input wired to the inner widget). Inner ids first_id.. (they collide with the root)."""
    g = Level(False, [("model", "MODEL"), ("clip", "CLIP"), ("strength_model", "FLOAT")],
              [("MODEL", "MODEL"), ("CLIP", "CLIP")])
    g.inputs[2]["_widget"] = True
    lora = g.node(first_id, "LoraLoader", ["lora-lab-example-sd15.safetensors", 0.8, 0.6])
    last = g.node(first_id + 1, "CLIPSetLastLayer", [-2])
    sm = g.widget_input(lora, "strength_model", "FLOAT")
    g.link("in", 0, lora, 0)
    g.link("in", 1, lora, 1)
    g.link("in", 2, lora, sm)
    g.link(lora, 1, last, 0)
    g.link(lora, 0, "out", 0)
    g.link(last, 0, "out", 1)
    return g.definition(uuid, "LoRA + clip skip")


def case_subgraph_colliding_ids() -> dict:
    """One subgraph whose inner ids (1, 2) are root ids too; its promoted strength has a value."""
    sg = lora_subgraph()
    g = Level(True)
    ckpt, pos, neg, _, ks, _, _ = _pipeline(g, 1)
    inst = g.instance(8, sg, widgets=[0.25], widget_keys=False)
    # rewire: model and clip through the subgraph
    g.nodes = [n for n in g.nodes]
    for n in (ks, pos, neg):
        n["inputs"][0]["link"] = None
    g.links = [lk for lk in g.links if not (lk[3] in (ks["id"], pos["id"], neg["id"]) and lk[4] == 0)]
    ckpt["outputs"][0]["links"], ckpt["outputs"][1]["links"] = [], []
    g.link(ckpt, 0, inst, 0)
    g.link(ckpt, 1, inst, 1)
    g.link(inst, 0, ks, 0)
    g.link(inst, 1, pos, 0)
    g.link(inst, 1, neg, 0)
    return g.workflow([sg])


def case_nested_and_two_instances() -> dict:
    """An outer subgraph holding a nested LoRA subgraph and a KSampler; the inner ids of both
    definitions start at 1 (colliding with the root and with each other); two instances of the
    outer one, the second one's promoted value linked from a root PrimitiveFloat."""
    inner = lora_subgraph("5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a02", first_id=1)
    o = Level(False, [("model", "MODEL"), ("clip", "CLIP"), ("latent", "LATENT"), ("strength", "FLOAT")],
              [("LATENT", "LATENT")])
    o.inputs[3]["_widget"] = True
    nest = o.instance(1, inner, widgets=[0.5])
    pos = o.node(2, "CLIPTextEncode", ["inside"])
    neg = o.node(3, "CLIPTextEncode", [""])
    ks = o.node(4, "KSampler", [7, "fixed", 3, 5.0, "dpmpp_2m", "karras", 0.9])
    o.link("in", 0, nest, 0)
    o.link("in", 1, nest, 1)
    o.link("in", 3, nest, 2)
    o.link(nest, 0, ks, 0)
    o.link(nest, 1, pos, 0)
    o.link(nest, 1, neg, 0)
    o.link(pos, 0, ks, 1)
    o.link(neg, 0, ks, 2)
    o.link("in", 2, ks, 3)
    o.link(ks, 0, "out", 0)
    outer = o.definition("5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a03", "sampler with LoRA")
    outer["definitions"] = {"subgraphs": [inner]}

    g = Level(True)
    ckpt = g.node(1, "CheckpointLoaderSimple")
    lat = g.node(2, "EmptyLatentImage")
    a = g.instance(3, outer, widgets=[0.75])
    b = g.instance(4, outer, widgets=[0.1], title="second pass")
    prim = g.node(5, "PrimitiveFloat", [0.33])
    dec = g.node(6, "VAEDecode")
    save = g.node(7, "SaveImage", ["nested"])
    up = g.node(8, "LatentUpscaleBy")
    for inst in (a, b):
        g.link(ckpt, 0, inst, 0)
        g.link(ckpt, 1, inst, 1)
    g.link(lat, 0, a, 2)
    g.link(a, 0, up, 0)
    g.link(up, 0, b, 2)
    g.link(prim, 0, b, 3)
    g.link(b, 0, dec, 0)
    g.link(ckpt, 2, dec, 1)
    g.link(dec, 0, save, 0)
    return g.workflow([outer])


def case_bypass_and_mute() -> dict:
    """Bypassed LoraLoader (links pass to its matching inputs), a bypassed subgraph instance, a
    muted preview branch, a muted node whose output feeds a kept node, a bypassed node inside
    a subgraph."""
    sg_g = Level(False, [("model", "MODEL"), ("clip", "CLIP")], [("MODEL", "MODEL"), ("CLIP", "CLIP")])
    l1 = sg_g.node(1, "LoraLoader", ["lora-lab-example-sd15.safetensors", 0.7, 0.7], mode=4)
    l2 = sg_g.node(2, "LoraLoaderModelOnly")
    sg_g.link("in", 0, l1, 0)
    sg_g.link("in", 1, l1, 1)
    sg_g.link(l1, 0, l2, 0)
    sg_g.link(l2, 0, "out", 0)
    sg_g.link(l1, 1, "out", 1)
    sg = sg_g.definition("5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a04", "two LoRAs")

    g = Level(True)
    ckpt = g.node(1, "CheckpointLoaderSimple", properties={"cnr_id": "comfy-core", "ver": "0.3.64"})
    lora = g.node(2, "LoraLoader", mode=4)
    kept = g.instance(3, sg)
    skipped = g.instance(4, sg, mode=4)
    pos = g.node(5, "CLIPTextEncode", ["kept"])
    neg = g.node(6, "CLIPTextEncode", ["muted"], mode=2)
    lat = g.node(7, "EmptyLatentImage")
    ks = g.node(8, "KSampler", properties={"cnr_id": "comfy-core", "ver": "v0.3.64"})
    dec = g.node(9, "VAEDecode", properties={"aux_id": "someone/some-pack", "ver": "4f2a9c1"})
    save = g.node(10, "SaveImage", ["bypass"], properties={"cnr_id": "-bad-", "aux_id": "no-slash", "ver": "latest"})
    prev = g.node(11, "PreviewImage", mode=2)
    muted_sg = g.instance(12, sg, mode=2)
    ks2 = g.node(13, "KSampler", [1, "fixed", 2, 4.0, "euler", "normal", 1.0])
    g.link(ckpt, 0, lora, 0)
    g.link(ckpt, 1, lora, 1)
    g.link(lora, 0, kept, 0)
    g.link(lora, 1, kept, 1)
    g.link(kept, 0, skipped, 0)
    g.link(kept, 1, skipped, 1)
    g.link(skipped, 0, ks, 0)
    g.link(skipped, 1, pos, 0)
    g.link(skipped, 1, neg, 0)
    g.link(pos, 0, ks, 1)
    g.link(neg, 0, ks, 2)
    g.link(lat, 0, ks, 3)
    g.link(ks, 0, dec, 0)
    g.link(ckpt, 2, dec, 1)
    g.link(dec, 0, save, 0)
    g.link(dec, 0, prev, 0)
    g.link(ckpt, 0, muted_sg, 0)
    g.link(ckpt, 1, muted_sg, 1)
    g.link(muted_sg, 0, ks2, 0)
    g.link(pos, 0, ks2, 1)
    g.link(pos, 0, ks2, 2)
    g.link(lat, 0, ks2, 3)
    return g.workflow([sg])


def case_primitives_and_reroutes() -> dict:
    """A PrimitiveNode feeding two seeds (one through two reroutes), a PrimitiveNode for a
    combo, Reroute chains on MODEL and LATENT, core Primitive* nodes linked to widgets, a Note."""
    g = Level(True)
    ckpt, pos, neg, _, ks, _, _ = _pipeline(g, 1)
    ks2 = g.node(8, "KSampler", [3, "randomize", 2, 6.0, "euler", "normal", 0.5])
    seed = g.node(9, "PrimitiveNode", [1234, "fixed"], outputs=[("INT", "INT")], title="seed")
    seed["outputs"][0]["widget"] = {"name": "seed"}
    r1 = g.node(10, "Reroute", None, inputs=[("", "*")], outputs=[("", "INT")])
    r2 = g.node(11, "Reroute", None, inputs=[("", "*")], outputs=[("", "INT")])
    sampler = g.node(12, "PrimitiveNode", ["dpmpp_2m", "fixed", ""], outputs=[("COMBO", "COMBO")])
    sampler["outputs"][0]["widget"] = {"name": "sampler_name"}
    rm = g.node(13, "Reroute", None, inputs=[("", "*")], outputs=[("", "MODEL")])
    rl = g.node(14, "Reroute", None, inputs=[("", "*")], outputs=[("", "LATENT")])
    rl2 = g.node(15, "Reroute", None, inputs=[("", "*")], outputs=[("", "LATENT")])
    steps = g.node(16, "PrimitiveInt", [3, "fixed"])
    text = g.node(17, "PrimitiveString", ["from a primitive string"])
    g.node(18, "Note", ["notes vanish"])
    denoise = g.node(19, "PrimitiveFloat", [0.35])
    ks_seed = g.widget_input(ks, "seed", "INT")
    ks2_seed = g.widget_input(ks2, "seed", "INT")
    ks2_sampler = g.widget_input(ks2, "sampler_name", "COMBO")
    ks2_steps = g.widget_input(ks2, "steps", "INT")
    ks2_denoise = g.widget_input(ks2, "denoise", "FLOAT")
    neg_text = g.widget_input(neg, "text", "STRING")
    g.link(seed, 0, ks, ks_seed)
    g.link(seed, 0, r1, 0)
    g.link(r1, 0, r2, 0)
    g.link(r2, 0, ks2, ks2_seed)
    g.link(sampler, 0, ks2, ks2_sampler)
    g.link(steps, 0, ks2, ks2_steps)
    g.link(denoise, 0, ks2, ks2_denoise)
    g.link(text, 0, neg, neg_text)
    g.link(ckpt, 0, rm, 0)
    g.link(rm, 0, ks2, 0)
    g.link(ks, 0, rl, 0)
    g.link(rl, 0, rl2, 0)
    g.link(rl2, 0, ks2, 3)
    g.link(pos, 0, ks2, 1)
    g.link(neg, 0, ks2, 2)
    dec2 = g.node(20, "VAEDecode")
    save2 = g.node(21, "SaveImage", ["second"])
    g.link(ks2, 0, dec2, 0)
    g.link(ckpt, 2, dec2, 1)
    g.link(dec2, 0, save2, 0)
    return g.workflow()


def case_instance_lacks_an_input() -> dict:
    """The instance's saved inputs lack the subgraph's `clip` input (an older save, a hand edit):
    the frontend rebuilds the instance's slots from the definition and pairs saved slots by name."""
    sg = lora_subgraph("5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a05", first_id=20)
    g = Level(True)
    ckpt, _, _, _, ks, _, _ = _pipeline(g, 1)
    inst = g.instance(8, sg, widgets=[0.25], drop_inputs=("clip",))
    ks["inputs"][0]["link"] = None
    g.links = [lk for lk in g.links if not (lk[3] == ks["id"] and lk[4] == 0)]
    ckpt["outputs"][0]["links"] = []
    g.link(ckpt, 0, inst, 0)
    g.link(inst, 0, ks, 0)
    return g.workflow([sg])


def case_nested_muted_and_bypassed() -> dict:
    """Inside a subgraph: a bypassed and a muted nested instance, a bypassed and a muted plain
    node; one root instance runs, one is muted."""
    inner = lora_subgraph("5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a06", first_id=1)
    o = Level(False, [("model", "MODEL"), ("clip", "CLIP")], [("MODEL", "MODEL"), ("CONDITIONING", "CONDITIONING")])
    by = o.instance(1, inner, widgets=[0.4], mode=4)
    mu = o.instance(2, inner, widgets=[0.6], mode=2)
    enc = o.node(3, "CLIPTextEncode", ["nested"])
    skip = o.node(4, "LoraLoaderModelOnly", mode=4)
    off = o.node(5, "CLIPTextEncode", ["off"], mode=2)
    o.link("in", 0, by, 0)
    o.link("in", 1, by, 1)
    o.link("in", 0, mu, 0)
    o.link("in", 1, mu, 1)
    o.link(by, 0, skip, 0)
    o.link(skip, 0, "out", 0)
    o.link(by, 1, enc, 0)
    o.link(mu, 1, off, 0)
    o.link(enc, 0, "out", 1)
    outer = o.definition("5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a07", "nested modes")
    outer["definitions"] = {"subgraphs": [inner]}
    g = Level(True)
    ckpt = g.node(1, "CheckpointLoaderSimple")
    run = g.instance(2, outer)
    muted = g.instance(3, outer, mode=2, title="muted copy")
    lat = g.node(4, "EmptyLatentImage")
    ks = g.node(5, "KSampler")
    for inst in (run, muted):
        g.link(ckpt, 0, inst, 0)
        g.link(ckpt, 1, inst, 1)
    g.link(run, 0, ks, 0)
    g.link(run, 1, ks, 1)
    g.link(muted, 1, ks, 2)
    g.link(lat, 0, ks, 3)
    return g.workflow([outer])


def case_version_1_root() -> dict:
    """The colliding-ids graph saved as version 1 (links as objects, `state.lastNodeId` 30)."""
    wf = case_subgraph_colliding_ids()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    wf["links"] = [dict(zip(keys, lk)) for lk in wf["links"]]
    wf["state"] = {"lastGroupId": 0, "lastNodeId": 30, "lastLinkId": len(wf["links"]), "lastRerouteId": 0}
    for k in ("last_node_id", "last_link_id"):
        del wf[k]
    wf["version"] = 1
    return wf


def case_primitives_in_subgraphs() -> dict:
    """Inside a subgraph: a PrimitiveNode on the KSampler's seed, a Reroute between the subgraph's
    model input and the sampler, a promoted `steps` input feeding two samplers. At the root: one
    instance's `steps` linked from a PrimitiveNode, the other's from its saved value."""
    s = Level(False, [("model", "MODEL"), ("positive", "CONDITIONING"), ("latent", "LATENT"), ("steps", "INT")],
              [("LATENT", "LATENT"), ("LATENT", "LATENT")])
    s.inputs[3]["_widget"] = True
    seed = s.node(1, "PrimitiveNode", [99, "fixed"], outputs=[("INT", "INT")])
    seed["outputs"][0]["widget"] = {"name": "seed"}
    rr = s.node(2, "Reroute", None, inputs=[("", "*")], outputs=[("", "MODEL")])
    k1 = s.node(3, "KSampler", [1, "fixed", 6, 7.0, "euler", "normal", 1.0])
    k2 = s.node(4, "KSampler", [2, "fixed", 12, 7.0, "euler", "normal", 0.5])
    k1_seed, k1_steps = s.widget_input(k1, "seed", "INT"), s.widget_input(k1, "steps", "INT")
    k2_steps = s.widget_input(k2, "steps", "INT")
    s.link(seed, 0, k1, k1_seed)
    s.link("in", 0, rr, 0)
    s.link(rr, 0, k1, 0)
    s.link(rr, 0, k2, 0)
    for k in (k1, k2):
        s.link("in", 1, k, 1)
        s.link("in", 1, k, 2)
        s.link("in", 2, k, 3)
    s.link("in", 3, k1, k1_steps)
    s.link("in", 3, k2, k2_steps)
    s.link(k1, 0, "out", 0)
    s.link(k2, 0, "out", 1)
    sg = s.definition("5b1a0e36-6f5d-4c0e-9a53-1d0c2f6b7a08", "two samplers")
    g = Level(True)
    ckpt = g.node(1, "CheckpointLoaderSimple")
    pos = g.node(2, "CLIPTextEncode")
    lat = g.node(3, "EmptyLatentImage")
    a = g.instance(4, sg, widgets=[3])
    b = g.instance(5, sg, widgets=[5])
    steps = g.node(6, "PrimitiveNode", [9, "fixed"], outputs=[("INT", "INT")])
    steps["outputs"][0]["widget"] = {"name": "steps"}
    g.link(ckpt, 1, pos, 0)
    for inst in (a, b):
        g.link(ckpt, 0, inst, 0)
        g.link(pos, 0, inst, 1)
        g.link(lat, 0, inst, 2)
    g.link(steps, 0, a, 3)
    for i, inst in enumerate((a, b)):
        for slot in (0, 1):
            dec = g.node(7 + 2 * i + slot, "VAEDecode")
            g.link(inst, slot, dec, 0)
            g.link(ckpt, 2, dec, 1)
    return g.workflow([sg])


CASES = {
    "subgraph_colliding_ids": case_subgraph_colliding_ids,
    "nested_two_instances": case_nested_and_two_instances,
    "bypass_and_mute": case_bypass_and_mute,
    "primitives_and_reroutes": case_primitives_and_reroutes,
    "instance_lacks_an_input": case_instance_lacks_an_input,
    "nested_muted_and_bypassed": case_nested_muted_and_bypassed,
    "version_1_root": case_version_1_root,
    "primitives_in_subgraphs": case_primitives_in_subgraphs,
}


def write(folder: Path = FIXTURE_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, build in CASES.items():
        p = folder / f"{name}.ui.json"
        p.write_text(json.dumps(build(), indent=1) + "\n")
        out.append(p)
    return out


if __name__ == "__main__":
    for p in write(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE_DIR):
        print(p)
