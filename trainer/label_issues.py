"""Suspected label errors and how far new images sit from a served model's training data: the arithmetic, in numpy,
on pooled features of the pretrained base (components/data_findings.py computes them and says what they mean).

Suspected label errors: confident learning (Northcutt, Jiang, Chuang, "Confident Learning: Estimating Uncertainty
in Dataset Labels", JAIR 2021), the rule `cleanlab` implements. cleanlab is AGPL-3.0, so it is not a dependency of
the product; the rule is short:

  1. out-of-sample probabilities: every training image is scored by a softmax-regression head that never saw it
     (stratified k folds; each head is trained on the other folds). The heads read the features' top principal
     components, about one per SAMPLES_PER_DIMENSION images: with more inputs than that, a linear head fits the
     wrong labels of a mislabelled folder too and then defends them;
  2. per-class thresholds: t_j = the mean of p_j over the images labelled j (the class's average confidence in
     its own label);
  3. an image's confident label is the class with the highest p_k among the classes with p_k >= t_k; the image is a
     suspected label error when that class is not its given label (an off-diagonal entry of the confident joint).

  Confident learning assumes that most images of a class carry the right label. A new span whose two folders were
  swapped makes a third of those classes wrong at once, and heads trained on them hedge (p around 0.5); so the
  rule runs ROUNDS times, the heads of each round trained without the images the previous round flagged (every
  image is still scored, by a head that never saw it).

  Measured on the sample shapes (MobileNetV2, ImageNet weights; 3 spans of 48 training images per class, span 3's
  circle and square folders swapped: 96 wrong labels among 432; 3 fold seeds, 96 and 160 px): all 1280 features as
  the heads' inputs found 49-66 of the 96 and flagged 215-244 right ones; 17 principal components and one round
  found 70-80 and flagged 5-12 right ones; 17 components and 3 rounds found 89-93 and flagged at most 1 right one.
  Spans 1 and 2 alone (no wrong label): nothing flagged. 5 % of the labels of all 3 spans changed at random instead:
  9-16 of 17-21 found, none wrongly. The rule is conservative by design: an image is flagged only when the class it
  looks like is as confident about it as about its average member. HEAD_L2 was chosen on the same data (0.1 against
  0.03 and 0.01: as many random errors found, more of a swapped folder pair, fewer right labels flagged).

Distance of new images from the served model's training data (span drift): per class, the distance between the
class means, bias-corrected and in units of the served class's spread:

    d^2 = (|m_new - m_ref|^2 - s_new / n_new - s_ref / n_ref) / s_ref

where m is a class's mean pooled feature vector, n its image count and s its spread, the mean squared distance of
an image to the class mean (the trace of the covariance). A sample mean misses the true mean by s / n in squared
distance on average, so the correction makes d about 0 for images drawn like the reference, whatever the counts,
and the division makes it free of the features' scale: d = 0.5 means the class mean moved by half the typical
distance of one image from its class mean.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

ROUNDS = 3
# The heads' inputs: one principal component per this many training images, within the bounds below.
SAMPLES_PER_DIMENSION = 25
MIN_DIMENSIONS = 8
MAX_DIMENSIONS = 128
# Below this many training images the out-of-sample heads learn nothing worth a verdict.
MIN_IMAGES = 20
# The softmax-regression heads: full-batch Adam on standardised components, L2 on the weights.
HEAD_STEPS = 200
HEAD_LEARNING_RATE = 0.05
HEAD_L2 = 0.1


# --- confident learning --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LabelIssues:
    """The verdict on each training image, in the order of the features given."""

    flagged: np.ndarray  # bool [n]: the confident label is not the given label
    suggested: np.ndarray  # int [n]: the confident label (-1: no class reaches its threshold)
    probabilities: np.ndarray  # float [n, classes]: the last round's out-of-sample probabilities
    thresholds: np.ndarray  # float [classes]: t_j of the last round
    dimensions: int  # principal components the heads read
    folds: int
    rounds: int


def find_label_issues(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int) -> LabelIssues:
    """Confident learning on pooled features (see the module docstring). `labels`: the given label ids."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) < MIN_IMAGES:
        raise ValueError(f"{len(labels)} training images are too few to score out of sample (at least {MIN_IMAGES})")
    dims = projection_dimensions(len(labels), features.shape[1])
    x = principal_components(np.asarray(features, dtype=np.float64), dims)
    fold_ids = stratified_folds(labels, num_classes, folds, seed)
    flagged = np.zeros(len(labels), dtype=bool)
    for _ in range(ROUNDS):
        probabilities = out_of_sample_probabilities(x, labels, num_classes, fold_ids, exclude=flagged)
        suggested, thresholds = confident_labels(probabilities, labels, num_classes)
        flagged = (suggested >= 0) & (suggested != labels)
    return LabelIssues(flagged, suggested, probabilities, thresholds, dims, int(fold_ids.max()) + 1, ROUNDS)


def projection_dimensions(images: int, num_features: int) -> int:
    wanted = int(round(images / SAMPLES_PER_DIMENSION))
    return max(1, min(num_features, MAX_DIMENSIONS, max(MIN_DIMENSIONS, wanted)))


def principal_components(features: np.ndarray, dims: int) -> np.ndarray:
    """The centred features projected on their `dims` leading principal components. Labels play no part, so the
    projection keeps the heads' probabilities out of sample."""
    centred = features - features.mean(axis=0)
    if centred.shape[0] < centred.shape[1]:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return centred @ vt[:dims].T
    _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    return centred @ vectors[:, ::-1][:, :dims]


def stratified_folds(labels: np.ndarray, num_classes: int, folds: int, seed: int) -> np.ndarray:
    """A fold id per image; each class spread evenly over the folds, in an order drawn from `seed`."""
    folds = max(2, min(int(folds), len(labels)))
    rng = np.random.default_rng(seed)
    fold_ids = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        # Continue where the previous class stopped, so that small classes do not all start in fold 0.
        fold_ids[members] = (start + np.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return fold_ids


def out_of_sample_probabilities(
    x: np.ndarray, labels: np.ndarray, num_classes: int, fold_ids: np.ndarray, exclude: np.ndarray
) -> np.ndarray:
    """[n, classes]: each image scored by the head trained on the other folds, without the `exclude`d images."""
    probabilities = np.zeros((len(labels), num_classes))
    for fold in range(int(fold_ids.max()) + 1):
        scored = fold_ids == fold
        train = ~scored & ~exclude
        if not scored.any():
            continue
        mean, scale = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        weights, bias = fit_softmax((x[train] - mean) / scale, labels[train], num_classes)
        probabilities[scored] = softmax((x[scored] - mean) / scale @ weights + bias)
    return probabilities


def fit_softmax(x: np.ndarray, labels: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with L2 on the weights, HEAD_STEPS full-batch Adam steps from zero."""
    n, dims = x.shape
    weights, bias = np.zeros((dims, num_classes)), np.zeros(num_classes)
    targets = np.eye(num_classes)[labels]
    moments = [[np.zeros_like(weights), np.zeros_like(weights)], [np.zeros_like(bias), np.zeros_like(bias)]]
    beta1, beta2 = 0.9, 0.999
    for step in range(1, HEAD_STEPS + 1):
        error = (softmax(x @ weights + bias) - targets) / max(n, 1)
        gradients = (x.T @ error + HEAD_L2 * weights, error.sum(axis=0))
        for parameter, gradient, (first, second) in zip((weights, bias), gradients, moments, strict=True):
            first *= beta1
            first += (1 - beta1) * gradient
            second *= beta2
            second += (1 - beta2) * gradient * gradient
            corrected = first / (1 - beta1**step)
            parameter -= HEAD_LEARNING_RATE * corrected / (np.sqrt(second / (1 - beta2**step)) + 1e-8)
    return weights, bias


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def confident_labels(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(confident label per image, -1 where no class reaches its threshold; the per-class thresholds t_j).

    A class without images gets an infinite threshold: nothing is confidently of a class nobody labelled."""
    thresholds = np.array(
        [probabilities[labels == j, j].mean() if np.any(labels == j) else np.inf for j in range(num_classes)]
    )
    above = probabilities >= thresholds
    confident = np.where(above, probabilities, -1.0).argmax(axis=1)
    return np.where(above.any(axis=1), confident, -1), thresholds


# --- span drift ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClassStats:
    """One class's images in feature space: mean vector, image count, spread (mean squared distance to the mean,
    with n - 1 in the denominator; 0 for a single image)."""

    mean: np.ndarray
    count: int
    spread: float


def class_stats(features: np.ndarray) -> ClassStats:
    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    count = len(features)
    spread = float(((features - mean) ** 2).sum() / (count - 1)) if count > 1 else 0.0
    return ClassStats(mean, count, spread)


def drift_distance(new: ClassStats, reference: ClassStats) -> Optional[float]:
    """The bias-corrected distance between the class means in units of the reference's spread (module docstring);
    None when the reference has no spread to measure with."""
    if reference.spread <= 0 or new.count < 1 or reference.count < 1:
        return None
    squared = float(((new.mean - reference.mean) ** 2).sum())
    noise = (new.spread / new.count) + (reference.spread / reference.count)
    return float(np.sqrt(max(squared - noise, 0.0) / reference.spread))
