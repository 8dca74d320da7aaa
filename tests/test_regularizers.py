import json

import numpy as np
import pytest

from dlcore import regularizers as R

W = np.array([[1.0, -2.0, 0.5], [0.0, -0.25, 3.0]])
SUM_ABS = 1.0 + 2.0 + 0.5 + 0.0 + 0.25 + 3.0
SUM_SQ = 1.0 + 4.0 + 0.25 + 0.0 + 0.0625 + 9.0


@pytest.mark.parametrize(
    "reg, l1, l2",
    [
        (R.L1(), 0.01, 0.0),
        (R.L2(), 0.0, 0.01),
        (R.L1L2(), 0.0, 0.0),
        (R.L1L2(l2=0.1), 0.0, 0.1),
        (R.l1(), 0.01, 0.0),
        (R.l2(0.3), 0.0, 0.3),
        (R.l1_l2(), 0.01, 0.01),
        (R.l1_l2(l1=0.2, l2=0.0), 0.2, 0.0),
        (R.L1(None), 0.01, 0.0),
        (R.L1L2(None, None), 0.0, 0.0),
    ],
)
def test_factors_and_defaults(reg, l1, l2):
    assert (reg.l1, reg.l2) == (l1, l2)
    assert type(reg.l1) is float and type(reg.l2) is float


@pytest.mark.parametrize(
    "reg, expected",
    [
        (R.L1(0.3), 0.3 * SUM_ABS),
        (R.L2(0.7), 0.7 * SUM_SQ),
        (R.L1L2(l1=0.3, l2=0.7), 0.3 * SUM_ABS + 0.7 * SUM_SQ),
        (R.L1L2(), 0.0),
    ],
)
def test_penalty_value(reg, expected):
    got = reg(W.astype(np.float32))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12)


def test_keras_doc_example_l2_of_ones():
    assert R.L2(2.0)(np.ones((5, 5))) == pytest.approx(50.0)


@pytest.mark.parametrize("reg", [R.L1(0.2), R.L2(0.05), R.L1L2(0.1, 0.2), R.L1L2()])
def test_config_round_trip(reg):
    config = json.loads(json.dumps(reg.get_config()))
    assert type(reg).from_config(config) == reg
    assert R.get(json.loads(json.dumps(R.serialize(reg)))) == reg


def test_config_contents_match_keras():
    assert R.L1(0.2).get_config() == {"l1": 0.2}
    assert R.L2(0.3).get_config() == {"l2": 0.3}
    assert R.L1L2(0.1, 0.2).get_config() == {"l1": 0.1, "l2": 0.2}


@pytest.mark.parametrize(
    "identifier, cls, l1, l2",
    [
        ("l1", R.L1, 0.01, 0.0),
        ("l2", R.L2, 0.0, 0.01),
        ("l1_l2", R.L1L2, 0.01, 0.01),
        ("L1", R.L1, 0.01, 0.0),
        ({"class_name": "L1L2", "config": {"l1": 0.5}}, R.L1L2, 0.5, 0.0),
        ({"class_name": "L2", "config": {"l2": 0.25}}, R.L2, 0.0, 0.25),
        ({"class_name": "l1"}, R.L1, 0.01, 0.0),
    ],
)
def test_get(identifier, cls, l1, l2):
    reg = R.get(identifier)
    assert type(reg) is cls and (reg.l1, reg.l2) == (l1, l2)


def test_get_none_and_instance():
    assert R.get(None) is None
    reg = R.L2(0.5)
    assert R.get(reg) is reg


def test_get_rejects_unknown():
    with pytest.raises(ValueError, match=r"unknown regularizer 'l3'; available: l1, l2, l1_l2"):
        R.get("l3")
    with pytest.raises(ValueError, match=r"'class_name' is one of L1, L2, L1L2, received .*'Ortho"):
        R.get({"class_name": "OrthogonalRegularizer", "config": {}})
    with pytest.raises(ValueError, match=r"invalid config for regularizer L1"):
        R.get({"class_name": "L1", "config": {"l2": 0.1}})
    with pytest.raises(ValueError, match=r"custom callables are not supported"):
        R.get(lambda w: 0.0)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: R.L1(-0.1), r"expected l1 >= 0, received l1=-0.1"),
        (lambda: R.L2(-1), r"expected l2 >= 0, received l2=-1"),
        (lambda: R.L1L2(l1=0.1, l2=-0.2), r"expected l2 >= 0, received l2=-0.2"),
        (lambda: R.l1_l2(l1=-0.5), r"expected l1 >= 0"),
        (lambda: R.L2(float("inf")), r"finite number, received l2=inf"),
        (lambda: R.L1("0.1"), r"received l1='0.1'"),
    ],
)
def test_invalid_factors(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()
