"""Canonical names of the operations engines implement, shared by engines and the API.

The user-facing modules (``dlcore.activations``, ``dlcore.losses``) map aliases
(Keras 2 spellings, ``None``) onto these names; engines see these, or the names
users registered their own functions under (``custom.py``). These lists are the
only ones: the engines' tables, the kernels (which may import this module and
nothing else of dlcore) and the user-facing modules read them from here.
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

# The losses that accept logits (from_logits=True); the others ignore the flag, as in Keras.
CROSSENTROPIES: tuple[str, ...] = (
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
)

ACCURACY_KINDS: tuple[str, ...] = ("binary", "categorical", "sparse")

# The accuracy metrics by the names users write, each with its kind; None: the kind the
# loss and the output width imply, as Keras 3 resolves "accuracy"
ACCURACY_NAMES: dict[str, str | None] = {
    "accuracy": None,
    "acc": None,
    "binary_accuracy": "binary",
    "categorical_accuracy": "categorical",
    "sparse_categorical_accuracy": "sparse",
}

# The update rules of Engine.optimizer_step, one per optimizer in dlcore.optimizers.
OPTIMIZER_RULES: tuple[str, ...] = (
    "sgd",
    "adam",
    "rmsprop",
    "adagrad",
    "adamax",
    "nadam",
    "adamw",
    "adadelta",
    "lion",
    "ftrl",
)

# How Engine.merge combines the outputs of several layers into one (Keras's merging layers).
MERGES: tuple[str, ...] = (
    "add",
    "subtract",
    "multiply",
    "average",
    "maximum",
    "minimum",
    "concatenate",
)

EPSILON = 1e-7  # Keras's backend epsilon: clipping bound of the cross-entropies and friends
LEAKY_RELU_NEGATIVE_SLOPE = 0.2  # keras.activations.leaky_relu default
ELU_ALPHA = 1.0
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
