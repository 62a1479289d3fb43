"""More of ComfyUI's core nodes for the headless runner (ComfyUI 0.3.64 ids, inputs, defaults):
LatentComposite and ImagePadForOutpaint (nodes.py; arithmetic in sampling/composite.py), and
ModelSamplingDiscrete / ModelSamplingContinuousEDM (comfy_extras/nodes_model_advanced.py),
which give MODEL another schedule: a new handle whose `model_sampling` is the schedule object
(sampling/schedules.py, schedules_lcm.py) that replaces the checkpoint's; the input is unchanged."""
from __future__ import annotations

import dataclasses

MAX_RESOLUTION = 16384
_PX = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}


class LatentComposite:
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples_to": ("LATENT",), "samples_from": ("LATENT",),
                             "x": ("INT", dict(_PX)), "y": ("INT", dict(_PX)), "feather": ("INT", dict(_PX))}}

    def composite(self, samples_to, samples_from, x, y, composite_method="normal", feather=0):
        from ..io.errors import NodeInputError
        from ..sampling.composite import composite_latent

        try:
            out = composite_latent(samples_to["samples"], samples_from["samples"], int(x), int(y), int(feather))
        except ValueError as e:
            raise NodeInputError("LatentComposite", "samples_from", tuple(samples_from["samples"].shape), str(e)) from None
        return ({**samples_to, "samples": out},)  # noise_mask / batch_index of samples_to kept


class ImagePadForOutpaint:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "expand_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "left": ("INT", dict(_PX)), "top": ("INT", dict(_PX)),
                             "right": ("INT", dict(_PX)), "bottom": ("INT", dict(_PX)),
                             "feathering": ("INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1})}}

    def expand_image(self, image, left, top, right, bottom, feathering):
        from ..sampling.composite import pad_for_outpaint

        return pad_for_outpaint(image, int(left), int(top), int(right), int(bottom), int(feathering))


# ModelSamplingDiscrete's `sampling` -> our prediction type (LCM: its own schedule class)
DISCRETE_SAMPLING = {"eps": "epsilon", "v_prediction": "v_prediction", "lcm": "lcm", "x0": "x0",
                     "img_to_img": "img_to_img"}
# ModelSamplingContinuousEDM's `sampling` -> (prediction type, sigma_data); the rest are refused
EDM_SAMPLING = {"v_prediction": ("v_prediction", 1.0), "edm": ("edm", 0.5), "eps": ("epsilon", 1.0)}
EDM_REFUSED = {
    "edm_playground_v2.5": "Playground v2.5's latent format (its own latent scale and mean) is not implemented",
    "cosmos_rflow": "Cosmos' rectified-flow sampling is for Cosmos models, not SD 1.x/2.x/SDXL",
}


def _with_schedule(model, schedule):
    return dataclasses.replace(model, model_sampling=schedule)


class ModelSamplingDiscrete:
    CATEGORY = "advanced/model"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "sampling": (list(DISCRETE_SAMPLING),),
                             "zsnr": ("BOOLEAN", {"default": False})}}

    def patch(self, model, sampling, zsnr):
        from ..io.errors import NodeInputError
        from ..sampling.schedules import DiscreteSchedule
        from ..sampling.schedules_lcm import LCMSchedule

        kind = DISCRETE_SAMPLING.get(sampling)
        if kind is None:
            raise NodeInputError("ModelSamplingDiscrete", "sampling", sampling, f"expected one of {list(DISCRETE_SAMPLING)}")
        # the node's zsnr replaces the checkpoint's ztsnr marker (ComfyUI passes it explicitly)
        schedule = LCMSchedule(zsnr=bool(zsnr)) if kind == "lcm" else DiscreteSchedule(kind, zsnr=bool(zsnr))
        return (_with_schedule(model, schedule),)


class ModelSamplingContinuousEDM:
    CATEGORY = "advanced/model"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        sig = {"min": 0.0, "max": 1000.0, "step": 0.001, "round": False}
        return {"required": {"model": ("MODEL",), "sampling": ([*EDM_SAMPLING, *EDM_REFUSED],),
                             "sigma_max": ("FLOAT", {"default": 120.0, **sig}),
                             "sigma_min": ("FLOAT", {"default": 0.002, **sig})}}

    def patch(self, model, sampling, sigma_max, sigma_min):
        from ..io.errors import NodeInputError
        from ..sampling.schedules import ContinuousEDMSchedule

        node = "ModelSamplingContinuousEDM"
        if sampling in EDM_REFUSED:
            raise NodeInputError(node, "sampling", sampling, f"not supported by the runner: {EDM_REFUSED[sampling]}")
        if sampling not in EDM_SAMPLING:
            raise NodeInputError(node, "sampling", sampling, f"expected one of {list(EDM_SAMPLING)}")
        if not 0.0 < float(sigma_min) < float(sigma_max):
            bad = "sigma_min" if not float(sigma_min) > 0.0 else "sigma_max"
            raise NodeInputError(node, bad, sigma_min if bad == "sigma_min" else sigma_max,
                                 f"needs 0 < sigma_min < sigma_max (got sigma_min {sigma_min}, sigma_max {sigma_max})")
        kind, sigma_data = EDM_SAMPLING[sampling]
        schedule = ContinuousEDMSchedule(kind, sigma_data=sigma_data, edm_sigma_min=float(sigma_min),
                                         edm_sigma_max=float(sigma_max))
        return (_with_schedule(model, schedule),)


_CLASSES = (LatentComposite, ImagePadForOutpaint, ModelSamplingDiscrete, ModelSamplingContinuousEDM)
NODE_CLASS_MAPPINGS = {c.__name__: c for c in _CLASSES}
NODE_DISPLAY_NAME_MAPPINGS = {"LatentComposite": "Latent Composite", "ImagePadForOutpaint": "Pad Image for Outpainting",
                              "ModelSamplingDiscrete": "ModelSamplingDiscrete",
                              "ModelSamplingContinuousEDM": "ModelSamplingContinuousEDM"}
