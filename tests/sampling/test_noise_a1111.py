"""A1111's noise (sampling/noise_a1111.py) against A1111's formulas (modules/rng.py, processing.py):
per-image seeds, the continuing generator and ENSD for the step noise, variation-seed slerp,
seed resize, the NV Philox generator (Random123's known answers and torch's CUDA draw), and
Sample with an A1111 Noise input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lora_lab.nodes.defs.nodes_a1111 import LoraLabA1111Noise
from lora_lab.nodes.defs.node_defs import LoraLabSampler
from lora_lab.nodes.io.errors import NodeInputError
from lora_lab.nodes.sampling.noise_a1111 import (
    A1111Noise,
    PhiloxGenerator,
    initial_noise,
    philox4x32,
    slerp,
)
from lora_lab.nodes.sampling.samplers import prepare_noise, sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHAPE = (4, 8, 6)  # one image's latent [C, H, W]


def cpu_randn(seed, shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("counter", "key", "want"), [  # Random123 kat_vectors, philox4x32 10 rounds
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
])
def test_philox_known_answers(counter, key, want):
    c, k = np.array(counter, np.uint32).reshape(4, 1), np.array(key, np.uint32).reshape(2, 1)
    assert philox4x32(c, k)[:, 0].tolist() == want
    assert c[:, 0].tolist() == counter  # inputs untouched


def test_nv_draws_torch_cuda_numbers():
    # torch.manual_seed(0); torch.randn(3, 4, device="cuda") (the output rng_philox's docstring quotes)
    cuda = torch.tensor([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                         [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                         [-1.07454231, -0.36314407, -1.67105067, 2.26550497]])
    g = PhiloxGenerator(0)
    torch.testing.assert_close(g.randn((3, 4)), cuda, rtol=0, atol=1e-6)
    assert g.offset == 1 and not torch.equal(g.randn((3, 4)), cuda)  # the next draw: offset 1
    big = PhiloxGenerator(2**40 + 5).randn((2, 3))  # a seed over 32 bits uses both key words
    assert not torch.equal(big, PhiloxGenerator(5).randn((2, 3)))
    assert big.dtype == torch.float32


def test_cpu_seeds_per_image_and_continuing_generators():
    rng = A1111Noise("CPU").image_rng((3, *SHAPE), 100)
    first = rng.first()
    for i in range(3):  # image i from seed + i, each with its own generator
        assert torch.equal(first[i], cpu_randn(100 + i, SHAPE))
    nxt = rng.next()
    for i in range(3):  # the step noise continues that generator
        g = torch.Generator().manual_seed(100 + i)
        torch.randn(SHAPE, generator=g)
        assert torch.equal(nxt[i], torch.randn(SHAPE, generator=g))
    # batch of one: exactly ComfyUI's noise (one CPU generator from the seed)
    assert torch.equal(A1111Noise("CPU").image_rng((1, *SHAPE), 7).first(), prepare_noise((1, *SHAPE), 7))


def test_ensd_restarts_the_step_noise_after_the_initial_draw():
    rng = A1111Noise("CPU", eta_noise_seed_delta=31337).image_rng((2, *SHAPE), 5)
    first = rng.first()
    assert torch.equal(first[1], cpu_randn(6, SHAPE))  # the initial noise is not affected
    a, b = rng.next(), rng.next()
    for i in range(2):
        g = torch.Generator().manual_seed(5 + i + 31337)
        assert torch.equal(a[i], torch.randn(SHAPE, generator=g))
        assert torch.equal(b[i], torch.randn(SHAPE, generator=g))


def _slerp_reference(val, low, high):
    """Spherical interpolation of each (channel, column) vector over the rows (independent loop)."""
    out = torch.empty_like(low)
    for c in range(low.shape[0]):
        for w in range(low.shape[2]):
            a, b = low[c, :, w].double(), high[c, :, w].double()
            omega = math.acos(float((a / a.norm()) @ (b / b.norm())))
            out[c, :, w] = (math.sin((1 - val) * omega) * a + math.sin(val * omega) * b) / math.sin(omega)
    return out


def test_variation_seed_slerp():
    cfg = A1111Noise("CPU", subseed=50, subseed_strength=0.3)
    assert cfg.seeds(9, 3) == ([9, 9, 9], [50, 51, 52])  # a variation keeps the seed, counts the subseed
    assert A1111Noise("CPU").seeds(9, 3) == ([9, 10, 11], [0, 1, 2])
    first = cfg.image_rng((2, *SHAPE), 9).first()
    for i in range(2):
        want = _slerp_reference(0.3, cpu_randn(9, SHAPE), cpu_randn(50 + i, SHAPE))
        torch.testing.assert_close(first[i], want, rtol=0, atol=1e-5)
    x = cpu_randn(1, SHAPE)
    assert torch.equal(slerp(0.4, x, x * 2), x * 0.4 + x * 2 * 0.6)  # parallel: A1111's (reversed) mix
    torch.testing.assert_close(slerp(1.0, x, cpu_randn(2, SHAPE)), cpu_randn(2, SHAPE), rtol=0, atol=1e-5)


def test_seed_resize_pastes_the_small_draw_in_the_centre():
    cfg = A1111Noise("NV", seed_resize_from_w=32, seed_resize_from_h=32)  # 4x4 latent into 8x6
    rng = cfg.image_rng((1, *SHAPE), 3)
    got = rng.first()[0]
    small = PhiloxGenerator(3).randn((4, 4, 4))
    full = PhiloxGenerator(3).randn(SHAPE)  # the image's own generator, drawn once at full size
    want = full.clone()
    want[:, 2:6, 1:5] = small  # dy = (8 - 4) // 2, dx = (6 - 4) // 2
    assert torch.equal(got, want)
    larger = A1111Noise("CPU", seed_resize_from_w=80, seed_resize_from_h=32).image_rng((1, *SHAPE), 3).first()[0]
    assert torch.equal(larger[:, 2:6, :], cpu_randn(3, (4, 4, 10))[:, :, 2:8])  # cropped where larger
    assert rng.generators[0].offset == 1  # the image's generator advanced by its one draw


def test_ancestral_step_noise_comes_from_a1111_generators():
    """Euler a with the denoiser x0 = x / 2: x' = x + (x / 2) / sigma * (sigma_down - sigma) + noise * sigma_up."""
    sigmas = torch.tensor([3.0, 1.5, 0.5, 0.0])
    cfg = A1111Noise("CPU", eta_noise_seed_delta=11)
    x0, rng = initial_noise((2, *SHAPE), 40, cfg)
    out = sample("euler_ancestral", lambda x, s: x * 0.5, x0 * sigmas[0], sigmas, rng)
    x = x0 * sigmas[0]
    gens = [torch.Generator().manual_seed(40 + i + 11) for i in range(2)]
    for i in range(3):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        up = min(s_next, (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
        down = (s_next**2 - up**2) ** 0.5
        x = x + (x * 0.5 / s) * (down - s)
        if s_next > 0:
            x = x + torch.stack([torch.randn(SHAPE, generator=g) for g in gens]) * up
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)
    comfy = sample("euler_ancestral", lambda x, s: x * 0.5, x0 * sigmas[0], sigmas, 40)
    assert not torch.allclose(out, comfy)  # ComfyUI draws the step noise from one generator


def test_sample_node_with_a1111_noise(tiny_handles):
    h = tiny_handles["sd1"]
    args = ("a fox", "blurry", 4, 3, 5.0, "euler", "normal", 64, 64)
    (cpu,) = LoraLabA1111Noise().make("CPU", 0, 0.0, 0, 0, 0)
    (cpu_sgm,) = LoraLabA1111Noise().make("CPU", 0, 0.0, 0, 0, 0, True)
    one, _ = LoraLabSampler().sample(h, *args, 1, a1111_noise=cpu)
    comfy_one = LoraLabSampler().sample(h, *args, 1)[0]
    # batch of one, euler: ComfyUI's noise; started as ComfyUI does (noise * sqrt(1 + sigma^2)) with
    # A1111's "SGM noise multiplier", else A1111's noise * sigma
    assert torch.equal(LoraLabSampler().sample(h, *args, 1, a1111_noise=cpu_sgm)[0], comfy_one)
    assert not torch.equal(one, comfy_one)
    two, lat = LoraLabSampler().sample(h, *args, 2, a1111_noise=cpu)
    comfy_two, comfy_lat = LoraLabSampler().sample(h, *args, 2)
    torch.testing.assert_close(two[0], one[0], rtol=0, atol=1e-4)  # a batch of 2: the UNet rounds differently
    assert not torch.allclose(lat["samples"][1], comfy_lat["samples"][1], atol=1e-3)  # ComfyUI: one draw of 2
    single_5, _ = LoraLabSampler().sample(h, "a fox", "blurry", 5, 3, 5.0, "euler", "normal", 64, 64, 1,
                                          a1111_noise=cpu)
    # image 1 of seed 4 = seed 5 alone (within the batched UNet's rounding; the noise is equal, see above)
    torch.testing.assert_close(two[1], single_5[0], rtol=0, atol=1e-3)
    (ensd,) = LoraLabA1111Noise().make("CPU", 0, 0.0, 0, 0, 31337)
    anc = ("a fox", "blurry", 4, 3, 5.0, "euler_ancestral", "normal", 64, 64, 1)
    a, _ = LoraLabSampler().sample(h, *anc, a1111_noise=cpu)
    b, _ = LoraLabSampler().sample(h, *anc, a1111_noise=ensd)
    assert not torch.equal(a, b)  # ENSD changes only the step noise
    (nv,) = LoraLabA1111Noise().make("NV", 0, 0.0, 0, 0, 0)
    img2img, _ = LoraLabSampler().sample(h, *args, 1, denoise=0.5, latent=lat, a1111_noise=nv)
    assert img2img.shape == (2, 64, 64, 3)


def test_start_is_noise_times_sigma_as_a1111(tiny_handles):
    """A model predicting eps = 0 and one Euler step leave x where it started: noise * sigma_max."""
    from lora_lab.nodes.sampling.samplers import ksample
    from lora_lab.nodes.sampling.schedules import get_sigmas, schedule_for

    schedule = schedule_for(tiny_handles["sd1"])
    sigmas = get_sigmas(schedule, "karras", 1)
    latent = torch.zeros((1, *SHAPE))
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    for sgm, scale in ((False, sigmas[0]), (True, torch.sqrt(1 + sigmas[0] ** 2))):
        noise, seed = initial_noise(latent.shape, 3, A1111Noise("CPU", sgm_noise_multiplier=sgm))
        out = ksample(zero, schedule, latent, noise, sigmas, None, None, 1.0, "euler", seed)
        torch.testing.assert_close(out, noise * scale, rtol=1e-6, atol=0)
    noise, _ = initial_noise(latent.shape, 3, None)
    out = ksample(zero, schedule, latent, noise, sigmas, None, None, 1.0, "euler", 3)
    torch.testing.assert_close(out, noise * torch.sqrt(1 + sigmas[0] ** 2), rtol=1e-6, atol=0)  # ComfyUI's


def test_bad_settings_are_named():
    with pytest.raises(NodeInputError, match="rng.*GPU"):
        A1111Noise("GPU")
    with pytest.raises(NodeInputError, match="subseed_strength"):
        A1111Noise("CPU", subseed_strength=1.5)
    with pytest.raises(NodeInputError, match="eta_noise_seed_delta"):
        A1111Noise("CPU", eta_noise_seed_delta=-1)
    with pytest.raises(NodeInputError, match="sgm_noise_multiplier"):
        A1111Noise("CPU", sgm_noise_multiplier="yes")
    with pytest.raises(NodeInputError, match="a1111_noise"):
        initial_noise((1, *SHAPE), 0, "CPU")


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "lcm", "ddpm",
                                  "euler_ancestral_cfg_pp", "res_multistep_ancestral", "er_sde", "seeds_2",
                                  "sa_solver", "euler", "dpmpp_2m", "dpmpp_sde"])
def test_every_sampler_draws_its_step_noise_from_a1111_generators(tiny_handles, name):
    """The samplers that draw step noise through default_noise_sampler take it from next(); the
    deterministic ones draw none; SDE samplers keep their Brownian tree (seeded with the int)."""
    from lora_lab.nodes.sampling.schedules import get_sigmas, schedule_for

    if name == "dpmpp_sde":
        pytest.importorskip("torchsde")
    schedule = schedule_for(tiny_handles["sd1"])
    sigmas = get_sigmas(schedule, "karras", 4)
    x0, rng = initial_noise((1, *SHAPE), 12, A1111Noise("NV"))
    calls = []
    nxt = rng.next
    rng.next = lambda: calls.append(1) or nxt()
    out = sample(name, lambda x, s: x * 0.5, x0 * sigmas[0], sigmas, rng, schedule=schedule)
    assert torch.isfinite(out).all()
    stochastic = name not in ("euler", "dpmpp_2m", "dpmpp_sde")
    assert bool(calls) == stochastic, calls
    if stochastic:
        assert rng.generators[0].offset == 1 + len(calls)  # NV: one Philox offset per draw
