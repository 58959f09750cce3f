"""The global model pickle for xain-sdk 0.6 participants (numpy 1.x readers)."""

from __future__ import annotations

import pickle
import pickletools

import numpy as np
import pytest

from device_protocol.xain.pickle_writer import pickle_from_flat_vector
from device_protocol.xain.safe_unpickle import load_array


@pytest.mark.parametrize("length", [0, 1, 5, 300, 70_000])
def test_reads_back_with_numpy_and_with_the_allow_list(length: int) -> None:
    vector = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    data = pickle_from_flat_vector(vector)
    for back in (pickle.loads(data), load_array(data, len(data))):
        assert back.dtype == np.dtype("<f4") and back.shape == (length,) and np.array_equal(back, vector)


def test_names_the_numpy_1x_module_every_numpy_can_import() -> None:
    globals_named = [
        arg for op, arg, _ in pickletools.genops(pickle_from_flat_vector(np.zeros(2))) if op.name == "GLOBAL"
    ]
    assert globals_named == ["numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"]


def test_is_byte_for_byte_what_numpy_writes_for_a_large_vector() -> None:
    vector = np.random.default_rng(1).standard_normal(65_536).astype(np.float32)
    numpys = pickletools.optimize(pickle.dumps(vector, protocol=3))
    numpys = numpys.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # numpy 2's name
    assert pickle_from_flat_vector(vector) == numpys


def test_casts_to_little_endian_float32_and_refuses_non_vectors() -> None:
    back = pickle.loads(pickle_from_flat_vector(np.arange(3, dtype=">f8")))
    assert back.dtype == np.dtype("<f4") and back.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="1-D"):
        pickle_from_flat_vector(np.zeros((2, 2)))
