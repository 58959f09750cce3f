import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from device_protocol.errors import UpdateRejected
from device_protocol.tensors import (
    decode_update,
    from_binary,
    from_json_entry,
    tensors_to_binary,
    to_binary,
    to_et_tensor_diff,
)

SHAPES = {"fc.weight": (2, 3), "fc.bias": (3,)}


def arrays(scale=1.0):
    return {
        "fc.weight": (np.arange(6, dtype=np.float32).reshape(2, 3) + 1) * scale,
        "fc.bias": np.array([0.5, -1, 2], dtype=np.float32) * scale,
    }


def test_ios_et_tensor_diff_with_net_prefix():
    result = to_et_tensor_diff(arrays(), {"num_samples": 7})
    assert set(result["data"]) == {"net.fc.weight", "net.fc.bias"}
    assert result["data"]["net.fc.weight"]["strides"] == [3, 1]
    update, weight = decode_update(result, SHAPES)
    assert weight == 7.0
    for name, arr in arrays().items():
        np.testing.assert_array_equal(update[name], arr)


def test_android_number_kind_without_strides_and_nested_lists():
    data = {"net.fc.weight": {"sizes": [2, 3], "data": [1, 2, 3, 4, 5, 6]}, "fc.bias": [0.5, -1, 2]}
    update, weight = decode_update({"kind": "number", "data": data, "meta": {}}, SHAPES)
    assert weight == 1.0 and update["fc.weight"].shape == (2, 3)
    nested = {"fc.weight": [[1, 2, 3], [4, 5, 6]], "fc.bias": [1, 1, 1]}
    update, _ = decode_update({"kind": "WEIGHT_DIFF", "data": nested}, SHAPES)
    np.testing.assert_array_equal(update["fc.weight"], arrays()["fc.weight"])


def test_column_major_strides():
    entry = {"sizes": [2, 3], "strides": [1, 2], "data": [1, 4, 2, 5, 3, 6]}
    np.testing.assert_array_equal(from_json_entry(entry), [[1, 2, 3], [4, 5, 6]])


def test_strides_outside_data_refused():
    with pytest.raises(ValueError, match="outside"):
        from_json_entry({"sizes": [2, 3], "strides": [10, 1], "data": [0] * 6})


def test_binary_round_trip_and_in_update():
    b = to_binary(arrays()["fc.weight"])
    assert b["dtype"] == "float32" and b["shape"] == [2, 3] and isinstance(b["data"], bytes)
    update, _ = decode_update({"kind": "WEIGHT_DIFF", "data": tensors_to_binary(arrays())}, SHAPES)
    np.testing.assert_array_equal(update["fc.bias"], arrays()["fc.bias"])


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
def test_binary_codec_property(arr):
    back = from_binary(to_binary(arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@given(
    hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), elements=st.floats(-1e6, 1e6, width=32)
    )
)
def test_et_entry_property(arr):
    entry = to_et_tensor_diff({"x": arr}, prefix="")["data"]["x"]
    np.testing.assert_array_equal(from_json_entry(entry), arr)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "object", "shape": [1], "data": b"x"},
        {"dtype": "float32", "shape": [2], "data": b"\0\0\0\0"},
        {"dtype": "float32", "shape": [-1], "data": b""},
        {"dtype": "float32", "shape": "2", "data": b""},
        {"dtype": "float32", "shape": [1], "data": "AAAA"},
    ],
)
def test_bad_binary_refused(entry):
    with pytest.raises(ValueError):
        from_binary(entry)


def bad(result):
    with pytest.raises(UpdateRejected) as err:
        decode_update(result, SHAPES)
    return err.value.message


def good_data():
    return to_et_tensor_diff(arrays())["data"]


def test_refusals():
    assert "training error: boom" in bad({"kind": "error", "data": {"error": "boom"}, "meta": {}})
    assert "unsupported result kind" in bad({"kind": "pickle", "data": good_data()})
    assert "empty result" in bad({"kind": "et_tensor_diff", "data": {}})
    assert "all-zero" in bad(to_et_tensor_diff(arrays(0.0)))
    data = good_data()
    del data["net.fc.bias"]
    assert "missing parameters ['fc.bias']" in bad({"kind": "number", "data": data})
    data = good_data()
    data["net.extra"] = [1.0]
    assert "unknown parameters ['net.extra']" in bad({"kind": "number", "data": data})
    data = good_data()
    data["net.fc.weight"] = {"sizes": [3, 3], "data": [1.0] * 9}
    assert "shape [3, 3]" in bad({"kind": "number", "data": data})
    data = good_data()
    data["net.fc.bias"]["data"][1] = float("nan")
    assert "NaN or Inf" in bad({"kind": "number", "data": data})
    data = good_data()
    data["net.fc.bias"]["data"][1] = "1.0"
    assert "list of numbers" in bad({"kind": "number", "data": data})
    data = good_data()
    data["net.fc.bias"]["data"] = [[1, 2], [3]]
    assert "list of numbers" in bad({"kind": "number", "data": data})
    assert "num_samples" in bad({"kind": "number", "data": good_data(), "meta": {"num_samples": -3}})
    assert "num_samples" in bad({"kind": "number", "data": good_data(), "meta": {"num_samples": 10**12}})
    assert "num_samples" in bad({"kind": "number", "data": good_data(), "meta": {"num_samples": "5"}})
    assert "given twice" in bad({"kind": "number", "data": {**good_data(), "fc.bias": [1.0, 2.0, 3.0]}})


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_decode_update_never_crashes(data):
    try:
        decode_update({"kind": "number", "data": data}, SHAPES)
    except UpdateRejected:
        pass


@pytest.mark.parametrize("binary", [False, True], ids=["json", "float64-binary"])
def test_values_beyond_float32_are_refused_not_turned_into_inf(binary):
    # 1e300 is finite as float64 (JSON numbers are) but Inf once cast to the float32 the sum takes.
    huge = {"fc.weight": np.full((2, 3), 1e300), "fc.bias": np.ones(3)}
    if binary:
        data = {name: to_binary(arr) for name, arr in huge.items()}
    else:
        data = {name: arr.ravel().tolist() for name, arr in huge.items()}
    assert "NaN or Inf" in bad({"kind": "number", "data": data})
