"""The batched augmentation against torchvision's per-image transforms and the Cutout paper's definition."""

import pytest
import torch
import torchvision.transforms.functional as TF
from torch.distributions import Chi2

from helpers import augment
from helpers.augment import Cutout

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
ALL_OFFSETS = torch.cartesian_prod(torch.arange(9), torch.arange(9))  # (top, left) into the 40x40 image


def chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of Pearson's chi-square goodness-of-fit test (torch's Chi2 distribution as reference)."""
    statistic = ((observed - expected) ** 2 / expected).sum()
    return float(1 - Chi2(torch.tensor(float(len(observed) - 1))).cdf(statistic))


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 images with every pixel value possible: what the ops see, without needing the data set."""
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def torchvision_augment(image: torch.Tensor, top: int, left: int, flip: bool, centre) -> torch.Tensor:
    """The per-image pipeline with fixed random choices: pad, crop, flip, to [0,1], normalise, cut."""
    x = TF.crop(TF.pad(image, [4]), top, left, 32, 32)
    x = TF.hflip(x) if flip else x
    x = TF.normalize(x.float() / 255, MEAN, STD)
    y, c = centre
    x[:, max(y - 8, 0) : min(y + 8, 32), max(c - 8, 0) : min(c + 8, 32)] = 0
    return x


def test_crop_at_every_offset_equals_torchvision_pad_then_crop():
    images = random_images(81)
    batched = augment.crop(images, ALL_OFFSETS, padding=4)
    for image, out, (top, left) in zip(images, batched, ALL_OFFSETS.tolist(), strict=True):
        assert torch.equal(out, TF.crop(TF.pad(image, [4]), top, left, 32, 32))


def test_all_81_crop_offsets_occur_uniformly():
    image = (torch.arange(32 * 32) + 1).reshape(1, 1, 32, 32)  # every pixel unique, padding is 0
    n = 81 * 200
    params = augment.sample_params(n, generator=torch.Generator().manual_seed(0))
    centre = augment.crop(image.expand(n, 1, 32, 32), params.offsets)[:, 0, 16, 16] - 1
    top, left = centre // 32 - 12, centre % 32 - 12  # recovered from the output, not from params
    counts = torch.bincount(top * 9 + left, minlength=81).double()
    assert (counts > 0).all() and len(counts) == 81
    assert chi_square_p(counts, torch.full((81,), n / 81)) > 1e-3


def test_flip_rate_is_one_half_and_flips_match_torchvision():
    flips = augment.sample_params(20_000, generator=torch.Generator().manual_seed(1)).flips
    assert abs(flips.double().mean().item() - 0.5) < 0.015  # 4 standard deviations of a fair coin
    images = random_images(8)
    chosen = torch.tensor([True, False] * 4)
    for image, out, flip in zip(images, augment.flip(images, chosen), chosen, strict=True):
        assert torch.equal(out, TF.hflip(image) if flip else image)


def hole_area_distribution() -> dict[int, float]:
    """Exact distribution of the masked area: centre uniform over 32x32, a 16x16 square clipped at the border."""
    extents = [min(c + 8, 32) - max(c - 8, 0) for c in range(32)]
    pmf: dict[int, float] = {}
    for height in extents:
        for width in extents:
            pmf[height * width] = pmf.get(height * width, 0) + 1 / 32**2
    return pmf


def area_fit_p(areas: torch.Tensor) -> float:
    pmf = hole_area_distribution()
    values = torch.tensor(sorted(pmf))
    assert set(areas.unique().tolist()) <= set(values.tolist())
    observed = torch.stack([(areas == v).sum() for v in values]).double()
    expected = torch.tensor([pmf[v] for v in values.tolist()], dtype=torch.float64) * len(areas)
    keep = expected >= 5  # the chi-square approximation needs enough expected counts; pool the rest
    if not keep.all():
        observed = torch.cat([observed[keep], observed[~keep].sum(0, keepdim=True)])
        expected = torch.cat([expected[keep], expected[~keep].sum(0, keepdim=True)])
    return chi_square_p(observed, expected)


def test_batched_and_per_image_cutout_mask_areas_follow_the_papers_distribution():
    n = 20_000
    centres = augment.sample_params(n, generator=torch.Generator().manual_seed(2)).centres
    batched = augment.cutout_mask(centres, 16).flatten(1).sum(1)
    torch.manual_seed(3)
    cutout = Cutout(n_holes=1, length=16)
    per_image = torch.stack([(cutout(torch.ones(3, 32, 32))[0] == 0).sum() for _ in range(n // 4)])
    assert area_fit_p(batched) > 1e-3 and area_fit_p(per_image) > 1e-3
    assert abs(batched.double().mean() - 196) < 1.5 and abs(per_image.double().mean() - 196) < 3  # E = 14 * 14


def assert_matches_torchvision(images: torch.Tensor, seed: int) -> None:
    """Batched `apply` and the per-image helper both equal this test's own torchvision pipeline."""
    params = augment.sample_params(len(images), generator=torch.Generator().manual_seed(seed))
    expected = torch.stack(
        [
            torchvision_augment(
                image, *params.offsets[i].tolist(), bool(params.flips[i]), params.centres[i, 0].tolist()
            )
            for i, image in enumerate(images)
        ]
    )
    torch.testing.assert_close(augment.apply(images, params, MEAN, STD), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(augment.apply_per_image(images, params, MEAN, STD), expected, rtol=0, atol=1e-6)


def test_batched_pipeline_equals_the_per_image_pipeline_with_the_same_choices():
    assert_matches_torchvision(random_images(256), seed=4)


def test_batched_pipeline_equals_the_per_image_pipeline_on_real_images(real_raw):
    assert_matches_torchvision(real_raw["train"].images[:256], seed=9)


def test_cutout_comes_after_normalisation_so_holes_are_the_mean_colour():
    images = random_images(64)
    params = augment.sample_params(64, generator=torch.Generator().manual_seed(5))
    out = augment.apply(images, params, MEAN, STD)
    holes = augment.cutout_mask(params.centres, 16).expand_as(out)
    assert (out[holes] == 0).all()  # 0 in normalised units = the mean colour
    reference = augment.reference_pipeline(MEAN, STD).transforms
    assert [type(t).__name__ for t in reference][-2:] == ["Normalize", "Cutout"]


def test_reference_pipeline_composes_with_torchvision_on_pil_images():
    torch.manual_seed(6)
    out = augment.reference_pipeline(MEAN, STD)(augment.to_pil(random_images(1)[0]))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert 64 * 3 <= (out == 0).sum() <= 256 * 3 + 10  # one hole of 64 to 256 pixels in 3 channels


def test_reference_dataset_serves_the_readmes_per_image_pipeline_with_labels():
    images, labels = random_images(4), torch.tensor([3, 1, 4, 1])
    dataset = augment.ReferenceDataset(images, labels, MEAN, STD)
    torch.manual_seed(10)
    image, label = dataset[2]
    torch.manual_seed(10)
    assert torch.equal(image, augment.reference_pipeline(MEAN, STD)(augment.to_pil(images[2])))
    assert label == 4 and len(dataset) == 4


def test_augment_is_seeded_and_returns_float32_on_the_batchs_device():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    first = augment.augment(images, MEAN, STD, generator=torch.Generator().manual_seed(7))
    again = augment.augment(images, MEAN, STD, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, again) and first.dtype == torch.float32 and first.device == images.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_on_cuda_matches_the_cpu_with_the_same_choices():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    params = augment.sample_params(64, generator=torch.Generator().manual_seed(8))
    on_gpu = augment.AugmentParams(params.offsets.cuda(), params.flips.cuda(), params.centres.cuda())
    torch.testing.assert_close(
        augment.apply(images.cuda(), on_gpu, MEAN, STD).cpu(), augment.apply(images, params, MEAN, STD)
    )
