"""Schedules, samplers and the KSampler path: invariants on tiny tensors (no ComfyUI needed)."""
from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from lora_lab.nodes.sampling import samplers_kdiff
from lora_lab.nodes.sampling.samplers import SAMPLER_NAMES, SDE_SAMPLER_NAMES, ksample, prepare_noise, sample
from lora_lab.nodes.sampling.schedules import (
    SCHEDULER_NAMES,
    DiscreteSchedule,
    OptionalDependencyError,
    get_sigmas,
    scheduler_sigmas,
)

HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None
HAS_SCIPY = importlib.util.find_spec("scipy") is not None
DETERMINISTIC = (
    "euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ddim", "uni_pc", "uni_pc_bh2", "euler_cfg_pp", "heunpp2",
    "dpmpp_2m_cfg_pp", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp",
)  # fmt: skip
OWN_STEPS = ("dpm_fast", "dpm_adaptive")  # deterministic, but their own t-steps, ending at the last non-zero sigma
ANCESTRAL = (
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "ddpm", "lcm", "euler_ancestral_cfg_pp",
    "dpmpp_2s_ancestral_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece",
)  # fmt: skip
RUNNABLE = tuple(n for n in SAMPLER_NAMES if HAS_TORCHSDE or n not in SDE_SAMPLER_NAMES)
STEPS = (1, 2, 4, 10, 20, 25)  # divisors of 1000, so ddim_uniform gives exactly steps + 1 sigmas

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's interval rounding


@pytest.fixture(scope="module")
def eps():
    return DiscreteSchedule("epsilon")


def _scheduler_params():
    skip_beta = pytest.mark.skipif(not HAS_SCIPY, reason="scheduler 'beta' needs scipy")
    return [pytest.param(n, marks=[skip_beta] if n == "beta" else []) for n in SCHEDULER_NAMES]


# -- the schedule ----------------------------------------------------------------------------


def test_discrete_schedule_table(eps):
    assert eps.sigmas.shape == (1000,) and eps.sigmas.dtype == torch.float32
    assert (eps.sigmas[1:] > eps.sigmas[:-1]).all()  # increasing with the timestep
    assert math.isclose(float(eps.sigma_min), 0.0291672, rel_tol=1e-5)
    assert math.isclose(float(eps.sigma_max), 14.6146, rel_tol=1e-4)
    idx = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(eps.timestep(eps.sigmas[idx]), idx)  # nearest index of a table sigma is itself
    assert torch.allclose(eps.sigma(idx.float()), eps.sigmas[idx], rtol=1e-6)
    mid = eps.sigma(torch.tensor([10.5]))  # log-linear between neighbours
    assert math.isclose(float(mid.log()), float((eps.log_sigmas[10] + eps.log_sigmas[11]) / 2), rel_tol=1e-6)
    assert torch.equal(eps.sigma(torch.tensor([-5.0, 2000.0])), eps.sigma(torch.tensor([0.0, 999.0])))  # clamped


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_calculate_denoised_inverts_the_forward_process(prediction_type):
    sched = DiscreteSchedule(prediction_type)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    sigma = torch.tensor([7.0, 0.4])
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * noise
    alpha, std = 1 / (1 + s**2) ** 0.5, s / (1 + s**2) ** 0.5  # the VP view of sigma
    target = noise if prediction_type == "epsilon" else alpha * noise - std * x0  # eps or v
    assert torch.allclose(sched.calculate_denoised(sigma, target, x), x0, atol=1e-5)
    assert torch.allclose(sched.calculate_input(sigma, x), x * alpha)


def test_noise_scaling_and_max_denoise(eps):
    latent, noise = torch.full((1, 4, 2, 2), 0.5), torch.ones(1, 4, 2, 2)
    s = eps.sigma_max
    assert eps.max_denoise(torch.stack([s, torch.tensor(0.0)]))
    assert not eps.max_denoise(torch.tensor([5.0, 0.0]))
    assert torch.allclose(eps.noise_scaling(s, noise, latent, True), 0.5 + torch.sqrt(1 + s**2))
    assert torch.allclose(eps.noise_scaling(torch.tensor(5.0), noise, latent, False), torch.full_like(latent, 5.5))


def test_bad_schedule_arguments_name_the_value():
    with pytest.raises(ValueError, match="'x_prediction'"):
        DiscreteSchedule("x_prediction")
    with pytest.raises(ValueError, match="0.5"):
        DiscreteSchedule(linear_start=0.5, linear_end=0.1)


# -- schedulers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _scheduler_params())
def test_scheduler_shape_order_and_end(eps, name):
    for steps in STEPS:
        if name == "kl_optimal" and steps == 1:
            continue
        sig = get_sigmas(eps, name, steps)
        assert sig.dtype == torch.float32 and sig.ndim == 1
        if name == "beta":  # repeated beta quantiles collapse, never more than steps + 1
            assert 2 <= len(sig) <= steps + 1
        else:
            assert len(sig) == steps + 1, (name, steps, sig)
        assert sig[-1] == 0
        assert (sig[1:] < sig[:-1]).all(), (name, steps, sig)
        assert sig[0] <= eps.sigma_max * (1 + 1e-6)


@pytest.mark.parametrize("name", ["karras", "exponential", "kl_optimal"])
def test_continuous_schedulers_span_the_model_range(eps, name):
    sig = get_sigmas(eps, name, 12)
    assert math.isclose(float(sig[0]), float(eps.sigma_max), rel_tol=1e-6)
    assert math.isclose(float(sig[-2]), float(eps.sigma_min), rel_tol=1e-5)


def test_normal_starts_at_sigma_max_and_sgm_uniform_skips_the_last(eps):
    normal, sgm = get_sigmas(eps, "normal", 10), get_sigmas(eps, "sgm_uniform", 10)
    for sig in (normal, sgm):  # sigma(999) = exp(log_sigmas[999]): the table value up to float32 rounding
        assert math.isclose(float(sig[0]), float(eps.sigma_max), rel_tol=1e-6)
    assert math.isclose(float(normal[-2]), float(eps.sigma_min), rel_tol=1e-6)
    assert sgm[-2] > normal[-2]


def test_denoise_takes_the_tail_of_a_longer_schedule(eps):
    full = get_sigmas(eps, "karras", 20)
    part = get_sigmas(eps, "karras", 10, denoise=0.5)
    assert torch.equal(part, full[-11:])
    assert get_sigmas(eps, "karras", 10, denoise=0.0).numel() == 0
    assert torch.equal(get_sigmas(eps, "karras", 10, denoise=0.99999), get_sigmas(eps, "karras", 10))


def test_discard_penultimate_sigma_samplers(eps):
    plain = get_sigmas(eps, "normal", 8)
    for name in ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"):
        sig = get_sigmas(eps, "normal", 8, sampler_name=name)
        longer = scheduler_sigmas(eps, "normal", 9)
        assert len(sig) == len(plain) and sig[-1] == 0
        assert torch.equal(sig, torch.cat([longer[:-2], longer[-1:]]))


def test_bad_scheduler_arguments_name_the_value(eps):
    with pytest.raises(ValueError, match="'nonsense'"):
        get_sigmas(eps, "nonsense", 10)
    with pytest.raises(ValueError, match="'nonsense'"):
        scheduler_sigmas(eps, "nonsense", 10)
    with pytest.raises(ValueError, match="steps 0"):
        get_sigmas(eps, "karras", 0)
    with pytest.raises(ValueError, match="denoise 1.5"):
        get_sigmas(eps, "karras", 10, denoise=1.5)
    with pytest.raises(ValueError, match="kl_optimal"):
        get_sigmas(eps, "kl_optimal", 1)
    with pytest.raises(ValueError, match="'dpm2'"):
        get_sigmas(eps, "karras", 10, sampler_name="dpm2")


@pytest.mark.skipif(HAS_SCIPY, reason="scipy is installed")
def test_beta_without_scipy_says_what_to_install(eps):
    with pytest.raises(OptionalDependencyError, match="scipy"):
        get_sigmas(eps, "beta", 10)


# -- noise ----------------------------------------------------------------------------------------


def test_prepare_noise_is_comfyui_noise():
    shape = (2, 4, 5, 7)
    expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(123), dtype=torch.float32)
    state = torch.get_rng_state()
    noise = prepare_noise(shape, 123)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert noise.dtype == torch.float32 and torch.equal(noise, expected)
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(prepare_noise(shape, 124), noise)
    assert prepare_noise((1, 4, 2, 2), 2**64 - 1).shape == (1, 4, 2, 2)  # ComfyUI's full seed range


# -- samplers -------------------------------------------------------------------------------------


def _x0():
    return torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(5))


def _start(eps, sigmas, seed=0):
    return eps.noise_scaling(sigmas[0], prepare_noise((2, 4, 6, 6), seed), _x0(), max_denoise=False)


def _toy_denoiser(x, sigma):  # (B,) sigma; not exact, so noise draws matter
    return 0.5 * x / (1 + sigma.view(-1, 1, 1, 1))


@pytest.mark.parametrize("name", DETERMINISTIC + ANCESTRAL + (SDE_SAMPLER_NAMES if HAS_TORCHSDE else ()))
def test_exact_denoiser_converges_to_x0(eps, name):
    x0 = _x0()
    sigmas = get_sigmas(eps, "karras", 10, sampler_name=name)
    out = sample(name, lambda x, s: x0, _start(eps, sigmas), sigmas, seed=1, schedule=eps)
    # uni_pc stops at sigma 0.001 rather than 0, so its error is of that order
    tol = 5e-3 if name.startswith("uni_pc") else 1e-4
    assert (out - x0).abs().max() < tol, name


@pytest.mark.parametrize("name", RUNNABLE)
def test_same_seed_same_result(eps, name):
    sigmas = get_sigmas(eps, "normal", 6, sampler_name=name)
    a = sample(name, _toy_denoiser, _start(eps, sigmas), sigmas, seed=7, schedule=eps)
    b = sample(name, _toy_denoiser, _start(eps, sigmas), sigmas, seed=7, schedule=eps)
    assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("name", ANCESTRAL + (SDE_SAMPLER_NAMES if HAS_TORCHSDE else ()))
def test_different_seeds_differ_for_stochastic_samplers(eps, name):
    sigmas = get_sigmas(eps, "normal", 6)
    x = _start(eps, sigmas)
    a = sample(name, _toy_denoiser, x, sigmas, seed=1, schedule=eps)
    assert not torch.equal(a, sample(name, _toy_denoiser, x, sigmas, seed=2, schedule=eps))


@pytest.mark.parametrize("name", [n for n in DETERMINISTIC + OWN_STEPS if n != "ddim"])
def test_seed_does_not_matter_for_deterministic_samplers(eps, name):
    sigmas = get_sigmas(eps, "normal", 6, sampler_name=name)
    x = _start(eps, sigmas)
    a = sample(name, _toy_denoiser, x, sigmas, seed=1, schedule=eps)
    assert torch.equal(a, sample(name, _toy_denoiser, x, sigmas, seed=2, schedule=eps))


@pytest.mark.parametrize("name", RUNNABLE)
def test_inputs_untouched_callback_and_interrupt_every_step(eps, name, monkeypatch):
    sigmas = get_sigmas(eps, "karras", 5, sampler_name=name)
    x = _start(eps, sigmas)
    x_before, sig_before = x.clone(), sigmas.clone()
    checks, calls = [], []
    for mod in ("samplers_kdiff", "samplers_unipc"):
        monkeypatch.setattr(f"lora_lab.nodes.sampling.{mod}.check_interrupt", lambda: checks.append(1))
    sample(name, _toy_denoiser, x, sigmas, seed=3, callback=lambda i, n, xi, d: calls.append((i, n, xi.shape, d.shape)), schedule=eps)
    assert torch.equal(x, x_before) and torch.equal(sigmas, sig_before)
    assert all(c[2] == x.shape and c[3] == x.shape for c in calls) and {c[1] for c in calls} == {5}
    if name in OWN_STEPS:  # one call and one interrupt check per solver step, however many
        assert [c[0] for c in calls] == list(range(len(calls))) and len(checks) == len(calls) >= 1
    else:
        assert [c[0] for c in calls] == list(range(5))
        assert len(checks) == 5


def test_interrupt_stops_sampling(eps, monkeypatch):
    class Stop(Exception):
        pass

    def stop():
        raise Stop

    monkeypatch.setattr("lora_lab.nodes.sampling.samplers_kdiff.check_interrupt", stop)
    sigmas = get_sigmas(eps, "karras", 5)
    with pytest.raises(Stop):
        sample("euler", _toy_denoiser, _start(eps, sigmas), sigmas, seed=0)


def test_lms_coefficients_are_lagrange_weights():
    # The basis polynomials sum to 1, so the weights of a step sum to its length.
    t = torch.tensor([14.6, 6.0, 2.9, 1.6, 0.9, 0.0]).numpy()
    for i in range(4):
        order = min(i + 1, 4)
        total = sum(samplers_kdiff.lms_coefficient(order, t, i, j) for j in range(order))
        assert math.isclose(total, float(t[i + 1]) - float(t[i]), rel_tol=1e-6)
    with pytest.raises(ValueError, match="order 3"):
        samplers_kdiff.lms_coefficient(3, t, 1, 0)


def test_unknown_sampler_names_the_value(eps):
    sigmas = get_sigmas(eps, "karras", 3)
    with pytest.raises(ValueError, match="'euler_b'"):
        sample("euler_b", _toy_denoiser, _start(eps, sigmas), sigmas, seed=0)
    with pytest.raises(ValueError, match="'euler_b'"):
        ksample(None, eps, _x0(), _x0(), sigmas, None, None, 7.0, "euler_b", 0)


@pytest.mark.parametrize("name", SDE_SAMPLER_NAMES)
def test_sde_samplers_without_torchsde_say_what_to_install(eps, name, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsde", None)  # makes `import torchsde` fail
    sigmas = get_sigmas(eps, "karras", 3)
    called = []
    with pytest.raises(OptionalDependencyError, match=f"'{name}'.*torchsde"):
        sample(name, lambda x, s: called.append(1) or x, _start(eps, sigmas), sigmas, seed=0, schedule=eps)
    assert not called  # failed before any model call


# -- the KSampler path ----------------------------------------------------------------------------


def _recording_model(record):
    def apply_model(x_in, timestep, cond):
        record.append((cond, timestep.clone()))
        return 0.1 * x_in + 0.01 * cond  # an "eps" prediction
    return apply_model


def test_ksample_cfg_mixes_cond_and_uncond(eps):
    sigmas = get_sigmas(eps, "normal", 3)
    latent, noise = torch.zeros(1, 4, 4, 4), prepare_noise((1, 4, 4, 4), 9)
    rec1, rec7 = [], []
    out1 = ksample(_recording_model(rec1), eps, latent, noise, sigmas, 1.0, -1.0, 1.0, "euler", 9)
    out7 = ksample(_recording_model(rec7), eps, latent, noise, sigmas, 1.0, -1.0, 7.0, "euler", 9)
    assert [c for c, _ in rec1] == [1.0] * 3  # cfg 1: the uncond pass is skipped
    assert [c for c, _ in rec7] == [1.0, -1.0] * 3
    assert rec7[0][1].dtype == torch.float32 and rec7[0][1].item() == 999.0  # the nearest training timestep
    assert not torch.equal(out1, out7)


def test_ksample_denoiser_is_the_cfg_mix(eps):
    # Euler over one step to sigma 0 returns the denoised prediction itself: check the CFG formula.
    sigmas = torch.tensor([3.0, 0.0])
    latent, noise = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    out = ksample(lambda x_in, t, c: c * torch.ones_like(x_in), eps, latent, noise, sigmas, 2.0, 0.5, 4.0, "euler", 0)
    x = noise * 3.0  # not max_denoise: sigma 3 < sigma_max
    cond_x0, uncond_x0 = x - 2.0 * 3.0, x - 0.5 * 3.0
    assert torch.allclose(out, uncond_x0 + (cond_x0 - uncond_x0) * 4.0)


def test_ksample_empty_sigmas_and_bad_noise(eps):
    latent = _x0()
    assert torch.equal(ksample(None, eps, latent, torch.zeros_like(latent), torch.zeros(0), None, None, 7.0, "euler", 0), latent)
    with pytest.raises(ValueError, match="noise shape"):
        ksample(None, eps, latent, torch.zeros(1, 4, 6, 6), get_sigmas(eps, "karras", 3), None, None, 7.0, "euler", 0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ksample_with_a_perfect_model_recovers_the_latent(prediction_type):
    # A model that knows x0 returns the exact eps / v for it; every sampler then lands on x0.
    sched = DiscreteSchedule(prediction_type)
    x0 = _x0()

    def apply_model(x_in, timestep, cond):
        sigma = sched.sigma(timestep).view(-1, 1, 1, 1)
        x = x_in * (1 + sigma**2) ** 0.5
        noise = (x - x0) / sigma
        alpha, std = 1 / (1 + sigma**2) ** 0.5, sigma / (1 + sigma**2) ** 0.5
        return noise if prediction_type == "epsilon" else alpha * noise - std * x0

    # "simple" sigmas are table sigmas, so timestep -> sigma is exact and the model is exact
    sigmas = get_sigmas(sched, "simple", 8)
    out = ksample(apply_model, sched, torch.zeros_like(x0), prepare_noise(x0.shape, 0), sigmas, None, None, 1.0, "dpmpp_2m", 0)
    assert (out - x0).abs().max() < 1e-3
