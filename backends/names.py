"""Canonical names of the operations engines implement, shared by engines and the API.

The user-facing modules (``dlcore.activations``, ``dlcore.losses``) map aliases
(Keras 2 spellings, ``None``) onto these names; engines only ever see these.
"""

ACTIVATIONS: tuple[str, ...] = (
    "linear",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "leaky_relu",
    "elu",
    "selu",
    "swish",
    "softplus",
    "softsign",
    "gelu",
    "hard_sigmoid",
    "exponential",
)

LOSSES: tuple[str, ...] = (
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "squared_hinge",
    "hinge",
    "categorical_hinge",
    "log_cosh",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "kl_divergence",
    "poisson",
    "cosine_similarity",
)

ACCURACY_KINDS: tuple[str, ...] = ("binary", "categorical", "sparse")

EPSILON = 1e-7  # Keras's backend epsilon: clipping bound of the cross-entropies and friends
LEAKY_RELU_NEGATIVE_SLOPE = 0.2  # keras.activations.leaky_relu default
ELU_ALPHA = 1.0
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
