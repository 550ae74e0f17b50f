"""Loading CIFAR-10: image folders and archives, torchvision's path, bad input, the cache (the data or
nothing), labels and fingerprints by content, where the data is looked for, splits, statistics."""

import os
import pickle
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import config, data
from helpers.data import CLASSES, DataError

SMALL = {"train": 2, "test": 1}  # images per class in the small trees these tests write


def write_tree(root: Path, per_class=SMALL, size=(32, 32), seed=0, suffix=".png") -> dict[str, np.ndarray]:
    """<root>/<split>/<class>/<n><suffix> with random pixels; returns the pixels in label order (N, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in per_class.items():
        pixels = rng.integers(0, 256, (len(CLASSES) * count, size[1], size[0], 3), dtype=np.uint8)
        for i, image in enumerate(pixels):
            folder = root / split / CLASSES[i // count]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i % count:04d}{suffix}")
        written[split] = pixels
    return written


def make_archive(root: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(root, arcname="cifar10")
    return path


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "tar.gz"])
def test_image_folders_decode_to_the_written_pixels_in_label_order(tmp_path, packed):
    written = write_tree(tmp_path / "tree")
    source = make_archive(tmp_path / "tree", tmp_path / "c.tar.gz") if packed else tmp_path / "tree"
    splits = data.load_raw(source, tmp_path / "cache", per_class=SMALL)
    for split, pixels in written.items():
        assert splits[split].images.dtype == torch.uint8
        assert torch.equal(splits[split].images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
        assert splits[split].labels.tolist() == [i // SMALL[split] for i in range(len(pixels))]


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    first = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    monkeypatch.setattr(data, "read_image_folders", lambda *a, **k: pytest.fail("decoded again"))
    second = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    assert torch.equal(first["train"].images, second["train"].images)


# ---------------------------------------------------------------- the cache: the data or nothing


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "cache").glob("*"))


def test_an_image_deleted_after_a_load_is_noticed_and_the_load_refuses_on_the_count(tmp_path, capsys):
    write_tree(tmp_path / "tree")
    data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    (tmp_path / "tree/train/cat/0001.png").unlink()
    capsys.readouterr()
    with pytest.raises(DataError, match="'train/cat' holds 1 images, expected 2"):
        data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    line = one_line(capsys.readouterr().err)
    assert "is stale" in line and "train/cat/0001.png removed" in line and "decoding the source again" in line
    assert cache_files(tmp_path / "cache") == []  # the stale cache is gone, not kept for later


def test_an_image_rewritten_after_a_load_is_decoded_again(tmp_path, capsys):
    written = write_tree(tmp_path / "tree")
    data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    changed = tmp_path / "tree/test/frog/0000.png"
    Image.fromarray(255 - written["test"][6]).save(changed)  # frog is class 6; one test image per class
    later = changed.stat().st_mtime_ns + 1_000_000_000  # a second later, as an edit by a person would be
    os.utime(changed, ns=(later, later))
    capsys.readouterr()
    splits = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    assert "test/frog/0000.png changed" in one_line(capsys.readouterr().err)
    assert torch.equal(splits["test"].images[6], torch.from_numpy(255 - written["test"][6]).permute(2, 0, 1))


def test_an_archive_written_again_with_the_same_bytes_keeps_its_cache(tmp_path, capsys, monkeypatch):
    write_tree(tmp_path / "tree")
    archive = make_archive(tmp_path / "tree", tmp_path / "c.tar.gz")
    first = data.load_raw(archive, tmp_path / "cache", per_class=SMALL)
    archive.write_bytes(archive.read_bytes())  # a copy or a new download of the same archive: a new time
    later = archive.stat().st_mtime_ns + 1_000_000_000
    os.utime(archive, ns=(later, later))
    capsys.readouterr()
    monkeypatch.setattr(data, "read_image_folders", lambda *a, **k: pytest.fail("decoded again"))
    again = data.load_raw(archive, tmp_path / "cache", per_class=SMALL)
    assert capsys.readouterr().err == ""
    assert torch.equal(again["train"].images, first["train"].images)


def test_an_archive_with_other_bytes_is_decoded_again(tmp_path, capsys):
    write_tree(tmp_path / "tree")
    archive = make_archive(tmp_path / "tree", tmp_path / "c.tar.gz")
    data.load_raw(archive, tmp_path / "cache", per_class=SMALL)
    other = write_tree(tmp_path / "other", seed=1)
    make_archive(tmp_path / "other", archive)
    capsys.readouterr()
    splits = data.load_raw(archive, tmp_path / "cache", per_class=SMALL)
    assert "is stale" in one_line(capsys.readouterr().err)
    assert torch.equal(splits["test"].images, torch.from_numpy(other["test"]).permute(0, 3, 1, 2))


def test_a_cache_of_an_older_format_is_not_read_and_is_removed_by_the_next_write(tmp_path):
    written = write_tree(tmp_path / "tree")
    data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    [cache] = cache_files(tmp_path / "cache")
    saved = torch.load(cache, weights_only=True)
    saved["meta"]["version"] = 2
    saved["tensors"]["train/images"] = torch.zeros_like(saved["tensors"]["train/images"])  # must not be read
    older = cache.with_name(cache.name.replace("-v3.pt", "-v2.pt"))
    assert older != cache, f"this test expects caches of version 3, named *-v3.pt; got {cache.name}"
    torch.save(saved, older)
    cache.unlink()
    splits = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    assert torch.equal(splits["train"].images, torch.from_numpy(written["train"]).permute(0, 3, 1, 2))
    assert cache_files(tmp_path / "cache") == [cache]  # the older one is gone


def damage(path: Path, found: bytes, replacement: bytes) -> None:
    """Overwrite bytes of the file where `found` is stored, as a bad disk or a stray write would."""
    stored = bytearray(path.read_bytes())
    at = stored.find(found)
    assert at > 0, "the bytes to damage are not stored as such"
    stored[at : at + len(found)] = replacement
    path.write_bytes(bytes(stored))


@pytest.mark.parametrize("part", ["an image", "the labels"])
def test_a_damaged_cache_is_decoded_again_to_the_written_pixels_and_labels(tmp_path, capsys, part):
    written = write_tree(tmp_path / "tree")
    first = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    [cache] = cache_files(tmp_path / "cache")
    if part == "an image":
        damage(cache, first["train"].images[3].numpy().tobytes(), bytes(3 * 32 * 32))
    else:  # every training image labelled airplane: class counts of 20 and 0
        damage(cache, first["train"].labels.numpy().tobytes(), bytes(8 * 20))
    capsys.readouterr()
    splits = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    line = one_line(capsys.readouterr().err)
    assert "is damaged: its tensors do not match their checksum; decoding the source again" in line
    for split, pixels in written.items():
        assert torch.equal(splits[split].images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
        assert splits[split].labels.tolist() == [i // SMALL[split] for i in range(len(pixels))]


def test_a_cache_without_an_entry_or_cut_short_is_decoded_again(tmp_path, capsys):
    write_tree(tmp_path / "tree")
    first = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    [cache] = cache_files(tmp_path / "cache")
    saved = torch.load(cache, weights_only=True)
    del saved["tensors"]["test/images"]
    torch.save(saved, cache)
    capsys.readouterr()
    again = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    assert "lacks test/images" in one_line(capsys.readouterr().err)
    assert torch.equal(again["test"].images, first["test"].images)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    again = data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    assert "is unreadable" in one_line(capsys.readouterr().err)
    assert torch.equal(again["train"].images, first["train"].images)


def test_one_source_keeps_one_cache_and_caches_of_gone_sources_or_old_formats_are_removed(tmp_path, capsys):
    cache_dir = tmp_path / "cache" / "cache"
    cache_dir.mkdir(parents=True)
    (cache_dir / "tree-0123456789ab-v1.pt").write_bytes(b"a cache of the first format")
    write_tree(tmp_path / "gone")
    data.load_raw(tmp_path / "gone", tmp_path / "cache", per_class=SMALL)
    for path in sorted((tmp_path / "gone").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "gone").rmdir()
    write_tree(tmp_path / "tree")
    data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
    [kept] = cache_files(tmp_path / "cache")
    for n in range(3):  # each change of the source: decoded again into the same one file
        (tmp_path / "tree" / f"notes-{n}.txt").write_text("not an image, but the folder changed")
        data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)
        assert cache_files(tmp_path / "cache") == [kept]
    assert "notes-2.txt added" in capsys.readouterr().err


# ---------------------------------------------------------------- labels and fingerprints, by content


@pytest.mark.parametrize(
    ("suffix", "packed", "label"),
    [
        (".png", False, "image folders: tree"),
        (".png", True, "image folders: tree"),
        (".jpg", False, "CIFAR-10 (JPEG copy)"),
        (".jpg", True, "CIFAR-10 (JPEG copy)"),
    ],
)
def test_the_label_says_what_the_images_are(tmp_path, monkeypatch, suffix, packed, label):
    monkeypatch.setattr(config, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(data, "PER_CLASS", SMALL)
    write_tree(tmp_path / "tree", suffix=suffix)
    source = make_archive(tmp_path / "tree", tmp_path / "tree.tar.gz") if packed else tmp_path / "tree"
    assert config.data_label(source) == label  # decodes: no cache yet
    assert config.data_label(source) == label  # from the cache's record
    datasets = data.prepare(config.QUICK.replace(val_size=10, train_limit=None, test_limit=None), source)
    assert datasets.label == label


def test_the_fingerprint_is_of_the_content_wherever_it_comes_from(tmp_path):
    written = write_tree(tmp_path / "png")
    write_tree(tmp_path / "bmp", suffix=".bmp")  # the same pixels (same seed), in another lossless format
    archive = make_archive(tmp_path / "png", tmp_path / "png.tar.gz")
    fingerprints = {
        name: data.load(source, tmp_path / "cache", per_class=SMALL).fingerprint
        for name, source in {"png": tmp_path / "png", "bmp": tmp_path / "bmp", "archive": archive}.items()
    }
    assert len(set(fingerprints.values())) == 1
    Image.fromarray(written["train"][0] ^ 1).save(tmp_path / "bmp/train/airplane/0000.bmp")  # one image's low bits
    os.utime(tmp_path / "bmp/train/airplane/0000.bmp", ns=(1, 1))
    assert data.load(tmp_path / "bmp", tmp_path / "cache", per_class=SMALL).fingerprint != fingerprints["png"]


def test_prepare_gives_the_datasets_the_fingerprint_of_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PER_CLASS", SMALL)
    write_tree(tmp_path / "tree")
    datasets = data.prepare(
        config.QUICK.replace(val_size=10, test_limit=None, train_limit=None), tmp_path / "tree", tmp_path
    )
    assert datasets.fingerprint == data.load(tmp_path / "tree", tmp_path).fingerprint
    assert datasets.fingerprint is not None and len(datasets.fingerprint) == 16


# ---------------------------------------------------------------- where the data is looked for


def test_the_data_is_cifar10_data_else_the_copy_beside_the_checkout_else_torchvisions(tmp_path, monkeypatch):
    copy = tmp_path / "shared" / "cifar10-jpeg.tar.gz"
    monkeypatch.setattr(config, "SHARED_COPY", copy)
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    assert config.data_source() is None  # torchvision's download into data/
    copy.parent.mkdir()
    copy.write_bytes(b"")
    assert config.data_source() == str(copy)
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "mine"))
    assert config.data_source() == str(tmp_path / "mine")


def test_truncated_archive_names_the_archive(tmp_path):
    write_tree(tmp_path / "tree")
    archive = make_archive(tmp_path / "tree", tmp_path / "broken.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="broken.tar.gz is truncated"):
        data.load_raw(archive, tmp_path / "cache", per_class=SMALL)


def test_undecodable_image_names_the_file(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree/train/cat/0001.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"train/cat/0001.png could not be decoded"):
        data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)


def test_wrong_image_size_is_an_error(tmp_path):
    write_tree(tmp_path / "tree")
    Image.new("RGB", (33, 32)).save(tmp_path / "tree/test/ship/0000.png")
    with pytest.raises(DataError, match=r"test/ship/0000.png is 33x32"):
        data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)


def test_empty_class_folder_is_an_error(tmp_path):
    write_tree(tmp_path / "tree")
    for image in (tmp_path / "tree/train/dog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="'train/dog' is missing or empty"):
        data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)


def test_unknown_class_folder_is_an_error(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree/train/unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "tree/train/unicorn/0000.png")
    with pytest.raises(DataError, match="unknown class folder 'train/unicorn'"):
        data.load_raw(tmp_path / "tree", tmp_path / "cache", per_class=SMALL)


def test_wrong_counts_are_an_error_never_a_partial_data_set(tmp_path):
    write_tree(tmp_path / "tree")
    with pytest.raises(DataError, match="holds 2 images, expected 5000"):
        data.load_raw(tmp_path / "tree", tmp_path / "cache")  # CIFAR-10's real counts


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_raw(tmp_path / "nowhere.tar.gz", tmp_path / "cache")


def test_no_network_and_no_data_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DataError) as error:
        data.load_raw(None, tmp_path / "data")
    message = str(error.value)
    assert "cifar-10-batches-py" in message and "could not be downloaded" in message
    assert "CIFAR10_DATA" in message and "no network" in message


def test_torchvision_path_gives_the_same_tensors_as_its_batches(tmp_path, monkeypatch):
    """torchvision's own CIFAR10 reads fake batch files (its md5 check bypassed); we convert them."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {
        name: (rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, 10, 4).tolist())
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    }
    for name, (pixels, labels) in batches.items():
        (folder / name).write_bytes(pickle.dumps({"data": pixels, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CLASSES)}))
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    splits = data.load_raw(None, tmp_path / "data")
    train_pixels = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert torch.equal(splits["train"].images, torch.from_numpy(train_pixels))
    assert torch.equal(splits["test"].images, torch.from_numpy(batches["test_batch"][0].reshape(-1, 3, 32, 32)))
    assert splits["test"].labels.tolist() == batches["test_batch"][1]


def test_the_shared_jpeg_copy_keeps_the_label_its_checkpoints_hold(real_raw, real_source):
    if real_source.name != "cifar10-jpeg.tar.gz":
        pytest.skip("the real data is not the project's JPEG copy")
    assert data.label_of(real_source) == "CIFAR-10 (JPEG copy)"  # as checkpoints of commit 6960a31 hold


def test_real_data_has_cifar10s_shape_and_counts(real_raw):
    assert real_raw["train"].images.shape == (50_000, 3, 32, 32)
    assert real_raw["test"].images.shape == (10_000, 3, 32, 32)
    assert real_raw["train"].labels.bincount().tolist() == [5000] * 10
    assert real_raw["test"].labels.bincount().tolist() == [1000] * 10


def test_stratified_split_is_disjoint_balanced_and_seeded():
    labels = torch.arange(10).repeat_interleave(50)
    rest, held_out = data.stratified_split(labels, 100, seed=3)
    assert labels[held_out].bincount().tolist() == [10] * 10
    assert sorted(rest.tolist() + held_out.tolist()) == list(range(500))
    assert torch.equal(held_out, data.stratified_split(labels, 100, seed=3)[1])
    assert not torch.equal(held_out, data.stratified_split(labels, 100, seed=4)[1])


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    pixels = images.numpy().transpose(1, 0, 2, 3).reshape(3, -1) / 255
    mean, std = data.channel_stats(images)
    np.testing.assert_allclose(mean, pixels.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(1, ddof=1), rtol=1e-12)


def test_validation_is_held_out_of_training_and_the_test_set_is_untouched(real_raw, real_source):
    datasets = data.prepare(config.RECIPE, real_source)
    assert (len(datasets.train), len(datasets.val), len(datasets.test)) == (45_000, 5_000, 10_000)
    assert datasets.val.labels.bincount().tolist() == [500] * 10
    assert torch.equal(datasets.test.images, real_raw["test"].images)
    train_rows = {bytes(x) for x in datasets.train.images[:2000].flatten(1).numpy()}
    assert not any(bytes(x) in train_rows for x in datasets.val.images.flatten(1).numpy())


def test_original_protocol_validates_on_the_test_set(real_source):
    datasets = data.prepare(config.RECIPE.replace(val_from_test=True), real_source)
    assert len(datasets.train) == 50_000
    assert datasets.val is datasets.test
