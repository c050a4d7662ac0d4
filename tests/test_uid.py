import numpy as np
import pyarrow as pa
import pytest

from curate.uid import (
    SUBSET_DTYPE,
    derive_uid,
    malformed_uid_rows,
    pairs_to_uids,
    uid_pairs,
    uid_uniform,
    write_datacomp_subset,
)


def test_uid_pairs_split_the_hex_in_two_halves():
    uid = "0123456789abcdef" + "fedcba9876543210"
    pairs = uid_pairs(pa.array([uid]))
    assert pairs.dtype == SUBSET_DTYPE
    assert int(pairs["f0"][0]) == 0x0123456789ABCDEF
    assert int(pairs["f1"][0]) == 0xFEDCBA9876543210
    assert pairs_to_uids(pairs) == [uid]


def test_uid_pairs_of_a_sliced_chunked_array():
    uids = [derive_uid(f"u{i}", "t") for i in range(10)]
    sliced = pa.chunked_array([pa.array(uids[:4]), pa.array(uids[4:])]).slice(2, 6)
    assert pairs_to_uids(uid_pairs(sliced)) == uids[2:8]


def test_derived_uid_is_stable_and_depends_on_url_and_caption():
    assert derive_uid("http://a", "cap") == derive_uid("http://a", "cap")
    assert derive_uid("http://a", "cap") != derive_uid("http://a", "cap2")
    assert derive_uid("http://a", None) == derive_uid("http://a", "")
    assert len(malformed_uid_rows(pa.array([derive_uid("x", "\udcff bad surrogate")]))) == 0


def test_malformed_uids_are_found_by_row():
    good = "a" * 32
    rows = malformed_uid_rows(pa.array([good, "A" * 32, None, "a" * 31, good + "0", "g" * 32, good]))
    assert rows.tolist() == [1, 2, 3, 4, 5]


def test_subset_npy_is_exactly_datacomps_format(tmp_path):
    uids = ["ff" * 16, "00" * 15 + "01", "7f" + "00" * 15, "00" * 15 + "01"]  # one repeat
    path = tmp_path / "subset.npy"
    assert write_datacomp_subset(uid_pairs(pa.array(uids)), path) == 4
    loaded = np.load(path)
    assert loaded.dtype == np.dtype("u8,u8") and loaded.dtype.str == "|V16"
    assert loaded.dtype.fields["f0"][0].str == "<u8"
    assert pairs_to_uids(loaded) == sorted(uids)  # structured sort == hex string sort


def test_uid_uniform_depends_on_uid_seed_and_stage_not_on_batching():
    uids = [derive_uid(f"u{i}", "t") for i in range(20000)]
    whole = uid_uniform(uids, 0, "metaclip")
    halves = np.concatenate([uid_uniform(uids[:777], 0, "metaclip"), uid_uniform(uids[777:], 0, "metaclip")])
    assert np.array_equal(whole, halves)
    assert not np.array_equal(whole, uid_uniform(uids, 1, "metaclip"))
    assert not np.array_equal(whole, uid_uniform(uids, 0, "other"))
    assert 0.0 <= whole.min() and whole.max() < 1.0
    assert abs(whole.mean() - 0.5) < 0.01 and abs((whole < 0.1).mean() - 0.1) < 0.01


def test_uid_pairs_refuses_malformed():
    with pytest.raises(ValueError):
        uid_pairs(pa.array(["xyz"]))
