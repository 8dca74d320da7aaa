import numpy as np
import pytest

from dlcore.utils import normalize, to_categorical


@pytest.mark.parametrize(
    "shape, expected_shape",
    [
        ((6,), (6, 5)),
        ((6, 1), (6, 5)),
        ((3, 2), (3, 2, 5)),
        ((3, 2, 1), (3, 2, 5)),
        ((1,), (1, 5)),
        ((1, 1), (1, 5)),
    ],
)
def test_to_categorical_shapes_and_values(shape, expected_shape):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=shape)
    labels.flat[0] = 4  # so that max + 1 == 5
    out = to_categorical(labels)
    assert out.shape == expected_shape and out.dtype == np.float32
    expected = np.eye(5)[labels.reshape(expected_shape[:-1])]
    np.testing.assert_array_equal(out, expected)


def test_to_categorical_scalar_and_list():
    np.testing.assert_array_equal(to_categorical(2, num_classes=4), [0, 0, 1, 0])
    np.testing.assert_array_equal(to_categorical([0, 2, 1]), [[1, 0, 0], [0, 0, 1], [0, 1, 0]])


def test_to_categorical_num_classes_and_dtype():
    out = to_categorical(np.array([1, 0]), num_classes=4, dtype="float64")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[0, 1, 0, 0], [1, 0, 0, 0]])
    out = to_categorical(np.array([1, 0], dtype=np.uint8), num_classes=2, dtype="int32")
    assert out.dtype == np.int32


def test_to_categorical_accepts_whole_floats():
    np.testing.assert_array_equal(to_categorical(np.array([2.0, 0.0])), np.eye(3)[[2, 0]])


def test_to_categorical_errors():
    with pytest.raises(ValueError, match=r"whole-number class labels, received the value 1.5"):
        to_categorical(np.array([0.0, 1.5]))
    with pytest.raises(ValueError, match=r"whole-number class labels, received the value nan"):
        to_categorical(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match=r"labels >= 0, received the label -1; map the labels"):
        to_categorical([0, -1, 2])
    with pytest.raises(
        ValueError,
        match=r"label 5, which is out of range for num_classes=3 .*pass num_classes=6 or more",
    ):
        to_categorical([0, 5, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"at least one label, received an empty array"):
        to_categorical([])
    with pytest.raises(ValueError, match=r"integer class labels, received an array of dtype <U"):
        to_categorical(["cat", "dog"])
    with pytest.raises(ValueError, match=r"expected num_classes >= 1, received num_classes=0"):
        to_categorical([0], num_classes=0)
    with pytest.raises(ValueError, match=r"positive int or None, received 2.5"):
        to_categorical([0], num_classes=2.5)


def _reference_normalize(x, axis, order):
    x = np.asarray(x, dtype=np.float64)
    moved = np.moveaxis(x, axis, -1)
    out = np.empty_like(moved)
    for idx in np.ndindex(moved.shape[:-1]):
        v = moved[idx]
        if order == np.inf:
            n = np.max(np.abs(v))
        else:
            n = np.sum(np.abs(v) ** order) ** (1.0 / order)
        out[idx] = v / (n if n != 0 else 1.0)
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("order", [1, 2, 3, np.inf])
def test_normalize_matches_reference(axis, order):
    x = np.random.default_rng(1).normal(size=(4, 3))
    x[1] = 0.0
    x[:, 2] = 0.0
    np.testing.assert_allclose(
        normalize(x, axis=axis, order=order),
        _reference_normalize(x, axis, order),
        rtol=1e-13,
        atol=0,
    )


def test_normalize_default_is_l2_over_last_axis():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out = normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-7)


def test_normalize_axis_none_and_ints():
    np.testing.assert_allclose(
        normalize(np.array([[3, 0], [0, 4]]), axis=None), [[0.6, 0.0], [0.0, 0.8]], rtol=1e-15
    )
    assert normalize(np.array([1, 1])).dtype == np.float64


def test_normalize_errors():
    with pytest.raises(ValueError, match=r"axis=2 for an array of shape \(2, 2\)"):
        normalize(np.ones((2, 2)), axis=2)
    with pytest.raises(ValueError, match=r"numeric array, received dtype <U"):
        normalize(np.array(["a"]))
