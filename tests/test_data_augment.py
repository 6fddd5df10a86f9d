"""The hard augmentation: the torch statement (augment.apply_hard) against DALI's operators and
against the PIL path, for fixed factors; and the sampled factors' distribution."""
import numpy as np
import pytest
import torch
from PIL import Image

from scob_fast.data import dali_available
from scob_fast.data.augment import HARD_AUG, apply_hard, hard_pil, sample_hard_params

CASES = [
    dict(brightness=1.3, contrast=0.6, saturation=1.5, hue=40.0, sigma=0.0),
    dict(brightness=0.4, contrast=1.8, saturation=0.2, hue=-70.0, sigma=1.2),
    dict(brightness=1.0, contrast=1.0, saturation=0.0, hue=0.0, sigma=1.9),  # grey + blur
    dict(brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, sigma=0.0),  # identity
]


def _image(size=24, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)


def _torch_ref(image, case):
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    return apply_hard(x, {k: np.array([float(v)]) for k, v in case.items()})[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("case", CASES)
def test_pil_matches_reference(case):
    image = _image()
    got = np.asarray(hard_pil(image, **case)).astype(np.float32)
    ref = _torch_ref(image, case)
    # PIL's 3x3 filter leaves the 1-pixel border unfiltered; the interior must agree exactly
    np.testing.assert_allclose(got[1:-1, 1:-1], ref[1:-1, 1:-1], atol=1.0)
    if case["sigma"] == 0:
        np.testing.assert_allclose(got, ref, atol=1.0)


@pytest.mark.skipif(dali_available() is not None, reason="no DALI")
@pytest.mark.parametrize("case", CASES)
def test_dali_matches_reference(case):
    from nvidia.dali import fn, pipeline_def

    image = np.array(_image())

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: [image], batch=True, layout="HWC")
        x = fn.color_twist(x, brightness=case["brightness"], contrast=case["contrast"],
                           saturation=case["saturation"], hue=case["hue"])
        # the pipeline's "no blur" is sigma 1e-3, which must be the identity
        return fn.gaussian_blur(x, window_size=3, sigma=case["sigma"] or 1e-3)

    p = pipe()
    p.build()
    got = np.array(p.run()[0].as_tensor())[0].astype(np.float32)
    np.testing.assert_allclose(got, _torch_ref(image, case), atol=1.0)


def test_sampled_factors_distribution():
    n = 20000
    p = sample_hard_params(np.random.default_rng(0), n)
    jittered = p["hue"] != 0
    sigma_on = p["sigma"] > 0
    assert abs(jittered.mean() - HARD_AUG["jitter_p"]) < 0.015
    assert abs(sigma_on.mean() - HARD_AUG["blur_p"]) < 0.015
    grey = (p["saturation"] == 0)
    assert abs(grey.mean() - HARD_AUG["gray_p"]) < 0.015
    b = p["brightness"][jittered]
    assert b.min() >= 0.2 and b.max() <= 1.8 and abs(b.mean() - 1.0) < 0.02
    assert np.abs(p["hue"]).max() <= 72.0 and abs(np.abs(p["hue"][jittered]).mean() - 36.0) < 1.0
    assert (p["brightness"][~jittered] == 1).all() and (p["contrast"][~jittered] == 1).all()
    s = p["sigma"][sigma_on]
    assert s.min() >= 1.0 and s.max() <= 2.0
