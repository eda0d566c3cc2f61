import numpy as np
import pytest

from mpq_export.runtime.sampler import DDIMSampler, NoiseSchedule, initial_noise


def test_ddim_with_the_true_noise_recovers_the_clean_sample():
    """x_t = sqrt(a) x0 + sqrt(1-a) eps: a predictor returning eps makes DDIM land on x0 exactly."""
    sched = NoiseSchedule(clip_sample=False)
    sampler = DDIMSampler(sched, steps=20)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 1, 4, 4)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    a = sampler.ac[sampler.timesteps[0]]
    x_T = (np.sqrt(a) * x0 + np.sqrt(1 - a) * eps).astype(np.float32)
    out = sampler.sample(x_T, lambda x, t, i: eps)
    np.testing.assert_allclose(out, x0, atol=1e-4)


def test_profiled_steps_are_evenly_spaced_and_include_both_ends():
    s = DDIMSampler(NoiseSchedule(), steps=50)
    idx = s.profiled_indices(10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 49
    assert np.ptp(np.diff(idx)) <= 1
    assert list(s.timesteps[:2]) == [980, 960] and s.timesteps[-1] == 0


def test_schedules_match_diffusers():
    import pytest

    torch = pytest.importorskip("torch")  # noqa: F841
    from diffusers import DDIMScheduler

    for kind in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        ref = DDIMScheduler(beta_schedule=kind, beta_start=0.00085, beta_end=0.012)
        ours = NoiseSchedule(beta_schedule=kind, beta_start=0.00085, beta_end=0.012).alphas_cumprod()
        np.testing.assert_allclose(ours, ref.alphas_cumprod.numpy(), atol=1e-6)  # diffusers is float32
        ref.set_timesteps(50)
        assert list(DDIMSampler(NoiseSchedule(beta_schedule=kind), 50).timesteps) == ref.timesteps.tolist()


def test_ddim_step_matches_diffusers():
    import pytest

    torch = pytest.importorskip("torch")
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(clip_sample=True)
    ref.set_timesteps(10)
    ours = DDIMSampler(NoiseSchedule(clip_sample=True), 10)
    x = initial_noise(3, 2, (1, 4, 4))
    eps = initial_noise(9, 2, (1, 4, 4))
    for i, t in enumerate(ours.timesteps[:3]):
        want = ref.step(torch.from_numpy(eps), int(t), torch.from_numpy(x)).prev_sample.numpy()
        np.testing.assert_allclose(ours.step(x, eps, i), want, atol=1e-5)


@pytest.mark.parametrize("kwargs, needle", [({"num_train_timesteps": 0}, "num_train_timesteps must be an integer >= 2"),
                                            ({"num_train_timesteps": 10.0}, "num_train_timesteps must be an integer"),
                                            ({"beta_start": -1.0}, "beta_start / beta_end must lie in"),
                                            ({"beta_schedule": "cosine"}, "unsupported beta_schedule 'cosine'"),
                                            ({"prediction_type": "sample"}, "unsupported prediction_type")])
def test_a_schedule_made_in_python_is_checked_like_one_read_from_a_file(kwargs, needle):
    from mpq_export.util.errors import MPQError
    from mpq_export.runtime.sampler import NoiseSchedule

    with pytest.raises(MPQError, match=needle):
        NoiseSchedule(**kwargs)
