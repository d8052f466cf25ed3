"""Video metrics on synthetic videos with known answers."""

import math

import numpy as np
import pytest
import torch

from draftattention_diffusers import video_metrics


def _video(seed=0, shape=(4, 32, 48, 3), lo=0.2, hi=0.8):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float64)


def test_identical_videos_psnr_inf_ssim_one():
    a = _video()
    assert video_metrics.psnr(a, a) == math.inf
    assert video_metrics.ssim_builtin(a, a) == pytest.approx(1.0, abs=1e-12)
    assert video_metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("d", [0.1, 0.02, 0.004])
def test_known_error_gives_exact_psnr(d):
    # Every pixel off by exactly +-d (no clipping: values stay in [0.2 - d, 0.8 + d]) -> mse = d^2.
    a = _video(1)
    signs = np.where(np.random.default_rng(2).random(a.shape) < 0.5, -1.0, 1.0)
    assert video_metrics.psnr(a, a + d * signs) == pytest.approx(20 * math.log10(1 / d), abs=1e-9)


def test_gaussian_noise_psnr_close_to_expected():
    a = _video(3, shape=(8, 64, 64, 3))
    sigma = 0.05
    noisy = a + np.random.default_rng(4).normal(0, sigma, a.shape)
    assert video_metrics.psnr(a, noisy) == pytest.approx(-20 * math.log10(sigma), abs=0.05)


def test_uint8_and_float_inputs_agree_and_torch_tensors_work():
    a8 = np.random.default_rng(5).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    b8 = np.clip(a8.astype(int) + 3, 0, 255).astype(np.uint8)
    af, bf = a8 / 255.0, b8 / 255.0
    assert video_metrics.psnr(a8, b8) == pytest.approx(video_metrics.psnr(af, bf), rel=1e-12)
    assert video_metrics.ssim_builtin(a8, b8) == pytest.approx(video_metrics.ssim_builtin(af, bf), rel=1e-12)
    # [1, F, H, W, C]
    assert video_metrics.psnr(torch.from_numpy(af)[None], bf) == pytest.approx(video_metrics.psnr(af, bf))


def test_ssim_of_constant_frames_matches_formula():
    # Constant frames: no variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) exactly.
    a, b = np.full((2, 16, 16, 3), 0.3), np.full((2, 16, 16, 3), 0.5)
    c1 = 0.01**2
    expected = (2 * 0.3 * 0.5 + c1) / (0.3**2 + 0.5**2 + c1)
    assert video_metrics.ssim_builtin(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_with_more_noise():
    a = _video(6, shape=(2, 48, 48, 3))
    rng = np.random.default_rng(7)
    small, large = (video_metrics.ssim_builtin(a, a + rng.normal(0, s, a.shape)) for s in (0.01, 0.1))
    assert 1.0 > small > large > 0.0


def test_ssim_builtin_matches_torchmetrics():
    pytest.importorskip("torchmetrics")
    from torchmetrics.functional.image import structural_similarity_index_measure

    a = _video(8, shape=(3, 40, 56, 3))
    b = np.clip(a + np.random.default_rng(9).normal(0, 0.1, a.shape), 0, 1)
    ref = float(structural_similarity_index_measure(torch.from_numpy(b).permute(0, 3, 1, 2),
                                                    torch.from_numpy(a).permute(0, 3, 1, 2), data_range=1.0))
    assert video_metrics.ssim_builtin(a, b) == pytest.approx(ref, abs=1e-10)
    assert video_metrics.ssim_backend() == "torchmetrics"
    assert video_metrics.ssim(a, b) == pytest.approx(ref, abs=1e-6)  # computed in float32


def test_bad_inputs_raise_with_expected_shapes():
    a = _video()
    with pytest.raises(ValueError, match=r"expected frames \[F, H, W, C\]"):
        video_metrics.psnr(a[0], a[0])
    with pytest.raises(ValueError, match="differ in shape"):
        video_metrics.psnr(a, a[:2])
    with pytest.raises(ValueError, match="at least 11x11"):
        video_metrics.ssim_builtin(a[:, :8, :8], a[:, :8, :8])


def test_lpips_unavailable_is_reported_not_faked(monkeypatch):
    monkeypatch.setattr(video_metrics, "_lpips_package", lambda: None)
    reason = video_metrics.lpips_unavailable_reason()
    assert reason.startswith("LPIPS skipped") and "pip install" in reason
    a = _video()
    out = video_metrics.video_metrics(a, a)
    assert out["lpips"] is None and out["lpips_skipped"] == reason and out["psnr"] == math.inf
    with pytest.raises(RuntimeError, match="LPIPS skipped"):
        video_metrics.lpips(a, a)


def test_lpips_without_backbone_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(video_metrics, "_lpips_package", lambda: "lpips")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert "not in the torch hub cache" in video_metrics.lpips_unavailable_reason()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / video_metrics._ALEXNET_WEIGHTS).write_bytes(b"")
    assert video_metrics.lpips_unavailable_reason() is None


# ------------------------------------------------------------------------- against the reference implementations
def test_psnr_and_per_frame_psnr_match_torchmetrics():
    pytest.importorskip("torchmetrics")
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a = _video(10, shape=(4, 24, 40, 3), lo=0.0, hi=1.0)
    b = np.clip(a + np.random.default_rng(11).normal(0, 0.03, a.shape), 0, 1)
    x, y = (torch.from_numpy(v).permute(0, 3, 1, 2) for v in (a, b))
    # (torchmetrics rounds through float32 somewhere: agreement to 1e-5 dB, far below the 2 decimals shown)
    assert video_metrics.psnr(a, b) == pytest.approx(float(peak_signal_noise_ratio(y, x, data_range=1.0)), abs=1e-5)
    per_frame = peak_signal_noise_ratio(y, x, data_range=1.0, reduction="none", dim=(1, 2, 3))
    assert video_metrics.psnr_per_frame(a, b) == pytest.approx(per_frame.tolist(), abs=1e-5)
    b[2] = a[2]  # an identical frame: inf, the others unchanged
    assert video_metrics.psnr_per_frame(a, b)[2] == math.inf


def test_lpips_matches_the_reference_packages_where_their_weights_are_present():
    reason = video_metrics.lpips_unavailable_reason()
    if reason:
        pytest.skip(reason)  # no AlexNet weights (no download here): video_metrics and the report say so instead
    a = _video(12, shape=(2, 64, 64, 3), lo=0.0, hi=1.0)
    b = np.clip(a + np.random.default_rng(13).normal(0, 0.1, a.shape), 0, 1)
    x, y = (torch.from_numpy(v).permute(0, 3, 1, 2).float() for v in (a, b))
    ours = video_metrics.lpips(a, b)
    checked = 0
    if video_metrics._lpips_package() == "torchmetrics":
        from torchmetrics.functional.image import learned_perceptual_image_patch_similarity

        ref = float(learned_perceptual_image_patch_similarity(y, x, net_type="alex", normalize=True))
        assert ours == pytest.approx(ref, rel=1e-4)
        checked += 1
    try:
        import lpips as lpips_pkg
    except ImportError:
        lpips_pkg = None
    if lpips_pkg is not None:
        net = lpips_pkg.LPIPS(net="alex", verbose=False)
        ref = float(net(y * 2 - 1, x * 2 - 1).mean())
        assert ours == pytest.approx(ref, rel=1e-3)
        checked += 1
    assert checked
