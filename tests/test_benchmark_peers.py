"""The benchmark's peers (JAX, JAX's floor, PyTorch) against a float64 NumPy reference of
the same training."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dlcore.benchmark import peers, runner
from dlcore.benchmark.cases import CASES, PEER_TARGETS, Case

CASE = Case("t", (6, 5, 4, 3), 4)
SEED = 7

# torch.compile imports torch.utils.mkldnn, which uses torch.jit.script_method.
TORCH_WARNINGS = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)
JAX_PEERS = ["jax", "jax-floor"]
EVERY_PEER = [*JAX_PEERS, pytest.param("torch", marks=TORCH_WARNINGS)]


def initial_weights(case: Case) -> list[np.ndarray]:
    """Float32 weights in Keras order, large enough that the ReLUs see both signs."""
    rng = np.random.default_rng(3)
    weights = []
    for n_in, n_out in zip(case.widths[:-1], case.widths[1:]):
        weights.append(rng.standard_normal((n_in, n_out)).astype(np.float32) * 0.5)
        weights.append(rng.standard_normal(n_out).astype(np.float32) * 0.1)
    return weights


def one_hot_data(samples: int, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Float32 features ``(samples, widths[0])`` and one-hot float32 targets."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((samples, case.widths[0])).astype(np.float32)
    y = np.eye(case.widths[-1], dtype=np.float32)[rng.integers(0, case.widths[-1], samples)]
    return x, y


class ReferenceTrainer:
    """The benchmark training in float64 NumPy: ReLU hidden layers, softmax, mean
    categorical cross-entropy, Adam; rows in the order of successive
    ``default_rng(seed).permutation(n)`` (or, with ``shuffle=False``, in their order in
    ``x`` every epoch), in batches of ``batch_size`` (the last may be smaller).

    ``torch_adam`` selects PyTorch's placement of epsilon: Keras 3 updates
    ``w -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)``, torch.optim.Adam
    ``w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.
    """

    def __init__(self, weights, x, y, batch_size, seed, *, torch_adam=False, shuffle=True):
        self.W = [w.astype(np.float64) for w in weights]
        self.m = [np.zeros_like(w) for w in self.W]
        self.v = [np.zeros_like(w) for w in self.W]
        self.t = 0
        self.x, self.y = x.astype(np.float64), y.astype(np.float64)
        self.batch_size, self.torch_adam, self.shuffle = batch_size, torch_adam, shuffle
        self.rng = np.random.default_rng(seed)

    def epoch(self) -> float:
        n = len(self.x)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        loss_sum = 0.0
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            loss, grads = self.loss_and_grads(self.x[rows], self.y[rows])
            loss_sum += loss * len(rows)
            self.adam(grads)
        return loss_sum / n

    def loss_and_grads(self, X, Y):
        layers = len(self.W) // 2
        inputs, H = [], X
        for layer in range(layers):
            inputs.append(H)
            Z = H @ self.W[2 * layer] + self.W[2 * layer + 1]
            H = np.maximum(Z, 0.0) if layer < layers - 1 else Z
        P = np.exp(Z - Z.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        loss = -np.mean(np.sum(Y * np.log(P), axis=1))
        dZ = (P - Y) / len(X)
        grads = [None] * len(self.W)
        for layer in reversed(range(layers)):
            grads[2 * layer] = inputs[layer].T @ dZ
            grads[2 * layer + 1] = dZ.sum(axis=0)
            if layer > 0:
                dZ = (dZ @ self.W[2 * layer].T) * (inputs[layer] > 0)
        return loss, grads

    def adam(self, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            if self.torch_adam:
                self.W[i] -= lr / c1 * self.m[i] / (np.sqrt(self.v[i]) / np.sqrt(c2) + eps)
            else:
                self.W[i] -= lr * np.sqrt(c2) / c1 * self.m[i] / (np.sqrt(self.v[i]) + eps)


def reference_of(peer, weights, x, y):
    """The float64 reference of what ``peer`` trains: torch's epsilon for torch, the rows
    in their order in ``x`` every epoch for jax-floor."""
    return ReferenceTrainer(
        weights,
        x,
        y,
        CASE.batch_size,
        SEED,
        torch_adam=peer == "torch",
        shuffle=peer != "jax-floor",
    )


@pytest.mark.parametrize("peer", EVERY_PEER)
@pytest.mark.parametrize("samples", [12, 10], ids=["full-batches", "partial-last-batch"])
def test_two_epochs_match_the_float64_reference(peer, samples):
    pytest.importorskip(peers.PEER_FRAMEWORKS[peer])
    x, y = one_hot_data(samples, CASE)
    weights = initial_weights(CASE)
    trainer = peers.make_trainer(peer, CASE, x, y, weights, SEED)
    reference = reference_of(peer, weights, x, y)
    assert trainer.name == peer
    for _ in range(2):
        loss = trainer.epoch()
        expected_loss = reference.epoch()
        assert isinstance(loss, float)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        got = trainer.get_weights()
        assert [w.shape for w in got] == [w.shape for w in weights]
        assert all(w.dtype == np.float32 for w in got)
        for w, expected in zip(got, reference.W):
            np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
    # Adam moved every weight array by far more than the tolerance.
    assert all(np.abs(w - w0).max() > 1e-3 for w, w0 in zip(reference.W, weights))


def test_the_floor_trains_the_same_batches_in_the_same_order_whatever_the_seed():
    """Its batches are fixed when it is made, so the seed changes nothing; the shuffled
    reference, which the jax peer matches, ends elsewhere."""
    pytest.importorskip("jax")
    x, y = one_hot_data(12, CASE)
    weights = initial_weights(CASE)
    trained = []
    for seed in (SEED, SEED + 1):
        trainer = peers.make_trainer("jax-floor", CASE, x, y, weights, seed)
        trainer.epoch()
        trainer.epoch()
        trained.append(trainer.get_weights())
    for w, w_other in zip(*trained):
        np.testing.assert_array_equal(w, w_other)
    shuffled = ReferenceTrainer(weights, x, y, CASE.batch_size, SEED)
    shuffled.epoch()
    shuffled.epoch()
    assert max(np.abs(w - expected).max() for w, expected in zip(trained[0], shuffled.W)) > 1e-4


@pytest.mark.parametrize("peer", JAX_PEERS)
def test_the_weights_are_copied_in_and_out(peer):
    pytest.importorskip("jax")
    x, y = one_hot_data(8, CASE)
    weights = initial_weights(CASE)
    before = [w.copy() for w in weights]
    trainer = peers.make_trainer(peer, CASE, x, y, weights, SEED)
    trainer.epoch()
    snapshot = trainer.get_weights()
    saved = [w.copy() for w in snapshot]
    trainer.epoch()
    for w, w0 in zip(weights, before):
        np.testing.assert_array_equal(w, w0)
    for w, w0 in zip(snapshot, saved):
        np.testing.assert_array_equal(w, w0)


def test_an_unknown_peer_names_the_peers():
    x, y = one_hot_data(8, CASE)
    with pytest.raises(
        ValueError, match=r"unknown peer 'tensorflow'; available: jax, jax-floor, torch"
    ):
        peers.make_trainer("tensorflow", CASE, x, y, initial_weights(CASE), SEED)


@pytest.mark.parametrize("peer", peers.PEERS)
def test_a_missing_peer_says_what_to_install(peer, monkeypatch):
    framework = peers.PEER_FRAMEWORKS[peer]
    monkeypatch.setitem(sys.modules, framework, None)  # makes `import framework` fail
    x, y = one_hot_data(8, CASE)
    with pytest.raises(ImportError, match=rf'needs {framework},.*pip install "dlcore\[peers\]"'):
        peers.make_trainer(peer, CASE, x, y, initial_weights(CASE), SEED)
    assert peers.peer_versions()[peer] is None


def test_peer_versions_are_the_installed_ones():
    """Every peer under its own name with its framework's version: jax-floor reports jax's."""
    assert peers.PEER_FRAMEWORKS == {"jax": "jax", "jax-floor": "jax", "torch": "torch"}
    versions = peers.peer_versions()
    assert list(versions) == list(peers.PEERS)
    for name in peers.PEERS:
        try:
            module = __import__(peers.PEER_FRAMEWORKS[name])
        except ImportError:
            assert versions[name] is None
        else:
            assert versions[name] == module.__version__
    assert versions["jax-floor"] == versions["jax"]


def test_the_peers_run_includes_the_floor_wherever_jax_is_installed():
    ready, missing, versions = runner.installed_peers()
    try:
        import jax
    except ImportError:
        assert "jax-floor" not in ready and "jax-floor is not installed" in missing["jax-floor"]
    else:
        assert "jax" in ready and "jax-floor" in ready
        assert versions["jax-floor"] == jax.__version__


def test_every_peer_target_names_a_peer_and_tiny_and_small_compare_with_the_floor():
    for case, ratios in PEER_TARGETS.items():
        assert case in CASES
        assert set(ratios) <= set(peers.PEERS)
    assert PEER_TARGETS["tiny"] == {"jax": 2.0, "jax-floor": 1.3}
    assert PEER_TARGETS["small"] == {"jax": 1.3, "jax-floor": 1.3}
    assert PEER_TARGETS["medium"] == {"jax": 1.0, "torch": 1.0}


@pytest.mark.parametrize(
    "change, message",
    [
        ("x", r"expected x of shape \(n, 6\) with n >= 1, received x.shape=\(8, 5\)"),
        ("y", r"expected one-hot y of shape \(8, 3\), received y.shape=\(8, 4\)"),
        ("soft", r"expected one-hot y: every row a single 1 and zeros, received row 0"),
        ("weights", r"expected weights of shapes .* received \[\(6, 5\), \(5,\)\]"),
    ],
)
@pytest.mark.parametrize("peer", peers.PEERS)
def test_data_and_weights_that_do_not_fit_the_case(peer, change, message):
    x, y = one_hot_data(8, CASE)
    weights = initial_weights(CASE)
    if change == "x":
        x = x[:, :5]
    elif change == "y":
        y = np.zeros((8, 4), np.float32)
    elif change == "soft":
        y = np.full_like(y, 1 / 3)
    else:
        weights = weights[:2]
    with pytest.raises(ValueError, match=message):
        peers.make_trainer(peer, CASE, x, y, weights, SEED)


def test_importing_the_peers_module_imports_no_peer():
    code = "import sys, dlcore.benchmark.peers; print(sorted({'jax', 'torch'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_peers_compute_float32_products_without_tf32():
    """On NVIDIA GPUs torch and JAX default to TF32 for float32 matrix products; the
    peers turn it off so that the float32 table compares the same arithmetic."""
    from types import SimpleNamespace

    calls = []
    torch = SimpleNamespace(
        backends=SimpleNamespace(
            cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=True)),
            cudnn=SimpleNamespace(allow_tf32=True),
        ),
        set_float32_matmul_precision=lambda value: calls.append(("torch", value)),
    )
    peers.full_float32_torch(torch)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    jax = SimpleNamespace(config=SimpleNamespace(update=lambda *a: calls.append(("jax", *a))))
    peers.full_float32_jax(jax)
    assert calls == [("torch", "highest"), ("jax", "jax_default_matmul_precision", "highest")]


# ---------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("peer", EVERY_PEER)
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_reduced_precision_trains_float32_weights_close_to_the_reference(peer, precision):
    pytest.importorskip(peers.PEER_FRAMEWORKS[peer])
    x, y = one_hot_data(10, CASE)
    weights = initial_weights(CASE)
    trainer = peers.make_trainer(peer, CASE, x, y, weights, SEED, precision=precision)
    reference = reference_of(peer, weights, x, y)
    loss, expected_loss = trainer.epoch(), reference.epoch()
    assert isinstance(loss, float) and np.isfinite(loss)
    # half precision keeps 8 (bfloat16) or 11 (float16) significant bits
    assert loss == pytest.approx(expected_loss, rel=2e-2)
    got = trainer.get_weights()
    assert [w.shape for w in got] == [w.shape for w in weights]
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in got)
    assert all(np.abs(w - w0).max() > 1e-3 for w, w0 in zip(got, weights))
    assert "float16" in trainer.arithmetic()  # float16 or bfloat16, as the device allows


@pytest.mark.parametrize(
    "precision, device, expected",
    [
        ("float32", "cuda", (None, False)),
        ("float32", "cpu", (None, False)),
        ("mixed_float16", "cuda", ("float16", True)),
        ("mixed_bfloat16", "cuda", ("bfloat16", False)),
        ("mixed_float16", "cpu", ("bfloat16", False)),
        ("mixed_bfloat16", "cpu", ("bfloat16", False)),
    ],
)
def test_torch_autocasts_to_what_each_device_runs(precision, device, expected):
    assert peers.torch_autocast(precision, device) == expected


def test_the_jax_peer_computes_in_the_policys_half_dtype():
    assert peers.jax_compute_dtype("float32") is None
    assert peers.jax_compute_dtype("mixed_float16") == "float16"
    assert peers.jax_compute_dtype("mixed_bfloat16") == "bfloat16"


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_the_floor_computes_what_the_jax_peer_computes(precision):
    pytest.importorskip("jax")
    x, y = one_hot_data(8, CASE)
    made = [
        peers.make_trainer(peer, CASE, x, y, initial_weights(CASE), SEED, precision=precision)
        for peer in JAX_PEERS
    ]
    assert made[0].arithmetic() == made[1].arithmetic()


def test_peers_allow_tf32_at_reduced_precision():
    from types import SimpleNamespace

    calls = []
    torch = SimpleNamespace(
        backends=SimpleNamespace(
            cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False)),
            cudnn=SimpleNamespace(allow_tf32=False),
        ),
        set_float32_matmul_precision=lambda value: calls.append(("torch", value)),
    )
    peers.reduced_precision_torch(torch)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    jax = SimpleNamespace(config=SimpleNamespace(update=lambda *a: calls.append(("jax", *a))))
    peers.reduced_precision_jax(jax)
    assert calls == [("torch", "high"), ("jax", "jax_default_matmul_precision", None)]


@pytest.mark.parametrize("peer", peers.PEERS)
def test_an_unknown_precision_names_the_precisions(peer):
    x, y = one_hot_data(8, CASE)
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; available: float32, mixed"):
        peers.make_trainer(peer, CASE, x, y, initial_weights(CASE), SEED, precision="fp8")
