"""Reading MNIST IDX files, and the on-device shuffling, jitter and padding."""

import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import data
from kd_jax.errors import DataError
from conftest import make_tiny_mnist


def test_idx_round_trip_gzipped_and_plain(tmp_path):
  arrays = make_tiny_mnist(50, 20)
  for compress in (True, False):
    folder = tmp_path / str(compress)
    data.write_idx_folder(folder, arrays, compress=compress)
    loaded = data.load_idx_folder(folder, check_counts=False)
    for name, array in arrays.items():
      np.testing.assert_array_equal(loaded[name], array)


def test_validation_split_is_carved_from_train(tiny_mnist_dir):
  splits = data.load_mnist(str(tiny_mnist_dir), validation_size=80, check_counts=False)
  assert len(splits.train_images) == 400 and len(splits.validation_images) == 80
  assert len(splits.test_images) == 200
  full = data.load_mnist(str(tiny_mnist_dir), check_counts=False)
  np.testing.assert_array_equal(full.train_images[400:], splits.validation_images)


def test_wrong_counts_are_refused_for_real_mnist(tiny_mnist_dir):
  with pytest.raises(DataError, match="holds 480 records, expected 60000"):
    data.load_mnist(str(tiny_mnist_dir))


def _corrupt(folder, stem, content):
  path = folder / f"{stem}.gz"
  path.write_bytes(gzip.compress(content))
  return path


@pytest.mark.parametrize("content, message", [
    (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(5), "magic number 2049, expected 2051"),
    (b"\x00\x00\x08", "truncated"),
    (b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100),
     "truncated or padded"),
])
def test_malformed_files_name_the_file(tmp_path, content, message):
  data.write_idx_folder(tmp_path, make_tiny_mnist(50, 20))
  path = _corrupt(tmp_path, "train-images-idx3-ubyte", content)
  with pytest.raises(DataError, match=message) as info:
    data.load_idx_folder(tmp_path, check_counts=False)
  assert str(path) in str(info.value)


def test_missing_folder_and_file_say_how_to_get_data(tmp_path):
  with pytest.raises(DataError, match="does not exist.*KD_JAX_MNIST_DIR"):
    data.load_idx_folder(tmp_path / "nowhere")
  data.write_idx_folder(tmp_path, make_tiny_mnist(50, 20))
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*missing"):
    data.load_idx_folder(tmp_path, check_counts=False)


def test_config_dir_wins_over_environment(monkeypatch):
  monkeypatch.setenv(data.MNIST_DIR_ENV, "/from/env")
  assert data.resolve_mnist_dir("/from/config") == "/from/config"
  assert data.resolve_mnist_dir("") == "/from/env"
  monkeypatch.delenv(data.MNIST_DIR_ENV)
  assert data.resolve_mnist_dir("") is None


def test_normalize_uses_mnist_statistics():
  images = jnp.full((2, 28, 28), 255, jnp.uint8)
  out = data.normalize(images)
  assert out.shape == (2, 28, 28) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, (1.0 - 0.1307) / 0.3081, rtol=1e-6)
  # Floats in [0, 1] are the same images: the same normalised values.
  np.testing.assert_allclose(data.normalize(jnp.ones((2, 28, 28), jnp.float32)), out, rtol=1e-6)


def test_epoch_indices_are_a_permutation_without_the_last_partial_batch():
  indices = data.epoch_batch_indices(jax.random.PRNGKey(0), 103, 10)
  assert indices.shape == (10, 10)
  flat = np.asarray(indices).ravel()
  assert len(set(flat.tolist())) == 100 and flat.max() < 103
  other = data.epoch_batch_indices(jax.random.PRNGKey(1), 103, 10)
  assert not np.array_equal(indices, other)


def test_jitter_shifts_each_image_by_at_most_max_shift():
  image = np.zeros((28, 28), np.uint8)
  image[12:16, 12:16] = 200  # A centred blob: shifting never clips it.
  images = jnp.asarray(np.stack([image] * 64))
  shifted = np.asarray(data.jitter(jax.random.PRNGKey(0), images, 2))
  offsets = set()
  for out in shifted:
    rows, cols = np.nonzero(out)
    dy, dx = rows.min() - 12, cols.min() - 12
    assert abs(dy) <= 2 and abs(dx) <= 2
    np.testing.assert_array_equal(out[12 + dy:16 + dy, 12 + dx:16 + dx], 200)
    assert out.sum() == image.sum()
    offsets.add((dy, dx))
  assert len(offsets) > 10  # Different examples get different shifts.
  np.testing.assert_array_equal(data.jitter(jax.random.PRNGKey(0), images, 0), images)


def test_padding_for_eval_masks_the_padding():
  images, labels = np.ones((7, 28, 28), np.uint8), np.arange(7)
  padded_images, padded_labels, mask = data.pad_for_eval(images, labels, 4)
  assert padded_images.shape == (8, 28, 28) and mask.tolist() == [True] * 7 + [False]
