"""In-memory sketch splits: the validation carve-out, the samplers, batch composition."""

import numpy as np
import pytest

from sb3dr_jax.data import sketch_sampling as ss

# A long-tailed toy training split: class c has 2 + 3c items (2 ... 26).
LABELS = np.repeat(np.arange(9), 2 + 3 * np.arange(9))


def test_carve_validation_is_stratified_disjoint_and_fixed_by_its_seed():
    tr, va = ss.carve_validation(LABELS, 0.25, seed=3)
    assert len(np.intersect1d(tr, va)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(LABELS)))
    for c in range(9):
        n = int((LABELS == c).sum())
        n_val = int((LABELS[va] == c).sum())
        assert n_val == min(max(round(0.25 * n), 1), n - 1)  # >= 1 held out, >= 1 kept
    tr2, va2 = ss.carve_validation(LABELS, 0.25, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, ss.carve_validation(LABELS, 0.25, seed=4)[1])
    assert len(ss.carve_validation(LABELS, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        ss.carve_validation(LABELS, 1.0)


def test_pk_batches_hold_p_classes_of_k_and_visit_every_class():
    it = ss.pk_batches(LABELS, 12, 4, seed=0)
    seen = set()
    for _ in range(9):  # 3 classes per batch: 9 batches cover 3 rounds of the 9 classes
        idx = next(it)
        y = LABELS[idx].reshape(3, 4)
        assert (y == y[:, :1]).all() and len(set(y[:, 0])) == 3
        seen |= set(y[:, 0])
    assert seen == set(range(9))
    a = [next(ss.pk_batches(LABELS, 12, 4, seed=5)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])  # deterministic from the seed
    with pytest.raises(ValueError, match="pk_k"):
        next(ss.pk_batches(LABELS, 12, 5, seed=0))
    with pytest.raises(ValueError, match="classes per batch"):
        next(ss.pk_batches(LABELS, 40, 4, seed=0))


def test_shuffle_covers_each_epoch_and_balanced_is_class_uniform():
    it = ss.shuffle_batches(10, 5, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate([next(it), next(it)])), np.arange(10))
    idx = np.concatenate([b for _, b in zip(range(400), ss.balanced_batches(LABELS, 9, 0))])
    share = np.bincount(LABELS[idx], minlength=9) / len(idx)
    np.testing.assert_allclose(share, 1 / 9, atol=0.02)  # head and tail classes alike
    with pytest.raises(ValueError, match="sketch_data.sampler"):
        ss.index_batches(LABELS, sampler="nope", global_batch=4, seed=0)


def test_positive_fraction_pk_is_one_and_matches_a_hand_count():
    it = ss.index_batches(LABELS, sampler="pk", global_batch=12, seed=0, pk_k=4)
    assert ss.positive_fraction(LABELS, it, 20) == 1.0
    # Hand-built batch: labels [0, 0, 1, 2] -> 2 of 4 anchors have a positive.
    assert ss.positive_fraction(LABELS, iter([np.array([0, 1, 2, 7])]), 1) == 0.5


def test_device_batches_split_the_global_batch_over_processes_and_devices():
    images = np.arange(len(LABELS), dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, 2, 2, 1), np.uint8
    )
    idx = np.arange(8)
    b = next(
        ss.device_batches(
            images, LABELS, iter([idx]), process_index=1, process_count=2, local_devices=2
        )
    )
    assert b["image"].shape == (2, 2, 2, 2, 1) and b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["index"].reshape(-1), [4, 5, 6, 7])
    np.testing.assert_array_equal(b["image"][..., 0, 0, 0].reshape(-1), [4, 5, 6, 7])


def test_load_sketch_split_reads_every_record(smoke_builder):
    images, labels, ids = ss.load_sketch_split(smoke_builder, "sketch_train")
    n = smoke_builder.info.splits["sketch_train"].num_examples
    s = int(smoke_builder.info.metadata["sketch_size"])
    assert images.shape == (n, s, s, 1) and images.dtype == np.uint8
    assert labels.shape == (n,) and len(ids) == n
