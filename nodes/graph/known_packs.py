"""Which well-known third-party pack a node type the runner does not know comes from (by exact
id, by prefix or by suffix), so the validation message can say what to install or where to run
the graph."""
from __future__ import annotations

# (match, pack): exact ids first, then prefixes ("x*") and suffixes ("*x").
_PACKS = (
    ("IPAdapter*", "ComfyUI_IPAdapter_plus"), ("ImpactWildcardProcessor", "ComfyUI-Impact-Pack"),
    ("FaceDetailer", "ComfyUI-Impact-Pack"), ("Impact*", "ComfyUI-Impact-Pack"),
    ("UltralyticsDetectorProvider", "ComfyUI-Impact-Subpack"), ("SAMLoader", "ComfyUI-Impact-Pack"),
    ("UltimateSDUpscale", "ComfyUI_UltimateSDUpscale"), ("UltimateSDUpscaleNoUpscale", "ComfyUI_UltimateSDUpscale"),
    ("Efficient Loader", "efficiency-nodes-comfyui"), ("KSampler (Efficient)", "efficiency-nodes-comfyui"),
    ("Eff. Loader SDXL", "efficiency-nodes-comfyui"), ("CR *", "ComfyUI_Comfyroll_CustomNodes"),
    ("easy *", "ComfyUI-Easy-Use"), ("*(rgthree)", "rgthree-comfy"), ("*|pysssss", "ComfyUI-Custom-Scripts"),
    ("ShowText|pysssss", "ComfyUI-Custom-Scripts"), ("ACN_*", "ComfyUI-Advanced-ControlNet"),
    ("ADE_*", "ComfyUI-AnimateDiff-Evolved"), ("VHS_*", "ComfyUI-VideoHelperSuite"),
    ("AIO_Preprocessor", "comfyui_controlnet_aux"), ("*Preprocessor", "comfyui_controlnet_aux"),
    ("UnetLoaderGGUF", "ComfyUI-GGUF"), ("CLIPLoaderGGUF", "ComfyUI-GGUF"), ("DualCLIPLoaderGGUF", "ComfyUI-GGUF"),
    ("SDXLPromptStyler", "sdxl_prompt_styler"), ("BNK_*", "ComfyUI_ADV_CLIP_emb"),
    ("Image Resize", "was-node-suite-comfyui"), ("Text Multiline", "was-node-suite-comfyui"),
    ("LoraLoader|pysssss", "ComfyUI-Custom-Scripts"), ("CheckpointLoader|pysssss", "ComfyUI-Custom-Scripts"),
    ("Power Lora Loader (rgthree)", "rgthree-comfy"), ("LayerMask: *", "ComfyUI_LayerStyle"),
    ("LayerStyle: *", "ComfyUI_LayerStyle"), ("SUPIR_*", "ComfyUI-SUPIR"), ("ReActorFaceSwap", "comfyui-reactor-node"),
    ("InstantID*", "ComfyUI_InstantID"), ("PulidModelLoader", "PuLID_ComfyUI"), ("ApplyPulid", "PuLID_ComfyUI"),
)


def pack_of(class_type: str) -> str | None:
    """The third-party pack a node id belongs to, when it is a well-known one; else None."""
    for pattern, pack in _PACKS:
        if pattern == class_type:
            return pack
    for pattern, pack in _PACKS:
        if pattern.endswith("*") and class_type.startswith(pattern[:-1]):
            return pack
        if pattern.startswith("*") and class_type.endswith(pattern[1:]):
            return pack
    return None
