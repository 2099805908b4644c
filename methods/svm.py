"""``svm``: the classical reference. Utterance functionals of the (normalized) feature frames into an RBF
support-vector machine, fitted with scikit-learn and shipped as a small PyTorch module.

The field's oldest yardstick for speech emotion recognition (the Interspeech ComParE baselines):
statistics of frame-level features over the utterance, standardized, into an SVM. A neural model that
loses to it on the same folds is not a competent reference for a compression benchmark, so it runs
in every grid like any method and sits on the Pareto plots as the on-device competitor it is.

- Functionals (``functionals="stats"``): mean, standard deviation, minimum and maximum of every feature
  dimension and of its frame-to-frame delta over the valid frames (8 x dims numbers; 640 for 80 log-mel
  bins). With utterance-level features (the same log-mel functionals, ``--features logmel-stats``, which
  per-speaker normalization then standardizes functional by functional; openSMILE's eGeMAPS or ComParE
  2016, ``--features compare``), the single vector is used as it is (``functionals="auto"`` picks this).
- The SVM is fitted on every training speaker: the fold's training and validation parts together,
  because its ``C`` is chosen by grouped cross-validation over those speakers (UA, one speaker group
  held out at a time), and the test speakers are never seen.
- The deploy model computes the functionals, the standardization, the RBF kernel against the support
  vectors and scikit-learn's one-vs-one votes (with its confidence tie-break), so that ONNX export,
  latency and cost counting treat it like every other deploy model. Its parameters are the support
  vectors (count x feature dimension) plus the dual coefficients and the scaler; its MACs are the
  functionals' sums and the kernel evaluations.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench.data.features import FUNCTIONALS_PER_DIM, utterance_functionals
from bench.method import Method, RunFailed
from bench.registry import METHODS, param

__all__ = ["FunctionalSVM", "SVMParams"]

FUNCTIONALS = ("auto", "stats", "none")
C_GRID = (0.1, 1.0, 10.0, 100.0)


@dataclass
class SVMParams:
    functionals: str = param("auto", "utterance statistics of the frames (stats), the features as they are "
                             "(none: utterance-level features), or auto (none for openSMILE functionals)",
                             choices=FUNCTIONALS)
    class_weight: str = param("balanced", "balanced: weight classes by inverse frequency (UA is the headline)",
                              choices=("balanced", "none"))
    cv_folds: int = param(5, "speaker groups for choosing C by grouped cross-validation on training speakers",
                          low=2, high=20)


class FunctionalSVM(nn.Module):
    """Functionals -> standardization -> RBF kernel SVM with one-vs-one votes.

    ``forward``: features ``(B, T, F)``, lengths ``(B,)`` -> scores ``(B, C)``: each class's one-vs-one votes
    plus scikit-learn's bounded confidence term (``SVC.decision_function`` with ``ovr`` shape), whose
    argmax is the prediction.

    Args:
        input_dim: feature dimensions per frame.
        num_classes: classes.
        num_support: support vectors.
        functionals: ``stats`` or ``none`` (the input's single frame is the feature vector).
        gamma: the RBF kernel's ``exp(-gamma |u - v|^2)``.
    """

    def __init__(self, input_dim: int, num_classes: int, num_support: int, functionals: str, gamma: float):
        super().__init__()
        self.functionals, self.gamma = functionals, float(gamma)
        dim = FUNCTIONALS_PER_DIM * input_dim if functionals == "stats" else input_dim
        pairs = num_classes * (num_classes - 1) // 2
        frozen = dict(requires_grad=False)
        self.mean = nn.Parameter(torch.zeros(dim), **frozen)
        self.scale = nn.Parameter(torch.ones(dim), **frozen)
        self.support_vectors = nn.Parameter(torch.zeros(num_support, dim), **frozen)
        self.dual_coef = nn.Parameter(torch.zeros(pairs, num_support), **frozen)  # one row per class pair
        self.intercept = nn.Parameter(torch.zeros(pairs), **frozen)
        # pair p = (i, j): +1 for i, -1 for j (scikit-learn's pair order: (0, 1), (0, 2), ..., (1, 2), ...)
        self.register_buffer("pair_sign", torch.zeros(pairs, num_classes))
        for p, (i, j) in enumerate(itertools.combinations(range(num_classes), 2)):
            self.pair_sign[p, i], self.pair_sign[p, j] = 1.0, -1.0

    def features(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` -> ``(B, D)`` utterance vectors before standardization."""
        if self.functionals == "stats":
            return utterance_functionals(x, lengths)
        return x[:, 0]

    def decision(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)`` -> one-vs-one decision values ``(B, pairs)`` (positive: the pair's first class)."""
        z = (self.features(x, lengths) - self.mean) / self.scale
        sv = self.support_vectors
        distance = (z * z).sum(1, keepdim=True) - 2.0 * z @ sv.T + (sv * sv).sum(1)[None, :]
        kernel = torch.exp(-self.gamma * distance.clamp(min=0.0))
        return kernel @ self.dual_coef.T + self.intercept

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        decision = self.decision(x, lengths)
        first, second = self.pair_sign.clamp(min=0.0), (-self.pair_sign).clamp(min=0.0)
        votes = (decision > 0).to(decision.dtype) @ first + (decision <= 0).to(decision.dtype) @ second
        confidence = decision @ self.pair_sign
        return votes + confidence / (3.0 * (confidence.abs() + 1.0))


def _pack(split, functionals: str) -> np.ndarray:
    """The utterance vectors of a split ``(N, D)`` (functionals computed one utterance at a time)."""
    rows = []
    with torch.inference_mode():
        for frames in split.features:
            x, lengths = frames.unsqueeze(0), torch.tensor([frames.shape[0]])
            rows.append(utterance_functionals(x, lengths)[0] if functionals == "stats" else frames[0])
    return torch.stack(rows).double().numpy()


def _choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, class_weight, folds: int) -> tuple[float, dict]:
    """C with the best mean UA over grouped cross-validation folds (whole speakers held out)."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    splits = list(GroupKFold(n_splits=min(folds, len(set(groups)))).split(x, y, groups))
    scores = {}
    for c in C_GRID:
        fold_scores = []
        for train, held in splits:
            model = make_pipeline(StandardScaler(), SVC(C=c, kernel="rbf", gamma="scale", class_weight=class_weight))
            model.fit(x[train], y[train])
            fold_scores.append(balanced_accuracy_score(y[held], model.predict(x[held])))
        scores[c] = float(np.mean(fold_scores))
    return max(scores, key=scores.get), scores


@METHODS.register("svm", "classical reference: utterance functionals (or openSMILE's) into an RBF SVM, C chosen "
                  "by grouped cross-validation on the training speakers", params=SVMParams)
class ClassicalSVM(Method):
    """Not a compression of the backbone: the floor a competent neural model must beat. It ignores the
    backbone and preset of its run (they only pair it with the plain models of the same grid cell)."""

    params: SVMParams
    classical_reference = True
    trains_on_validation = True  # C is chosen by grouped CV, so the final fit may use every training speaker
    trains_at = "none"
    record_fields = {
        "svm_c": "the SVM's C, chosen by grouped cross-validation on the training speakers",
        "svm_cv_ua": "that C's cross-validated UA",
        "svm_cv_scores": "cross-validated UA of every C tried",
        "svm_support_vectors": "support vectors of the fitted SVM",
        "svm_feature_dim": "functionals per utterance",
        "svm_functionals": "the functional set (log-mel statistics, eGeMAPS, ComParE)",
        "svm_class_weight": "class weighting of the fit",
        "svm_train_accuracy": "accuracy on its own training utterances",
    }

    def check(self, ctx, start: nn.Module | None) -> None:
        if start is not None:
            raise RunFailed("svm is a reference of its own: it cannot take another method's model (compose it with nothing)")
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise RunFailed("svm needs scikit-learn: pip install scikit-learn") from None
        if len({s for s in ctx.data.speakers["train"] + ctx.data.speakers["val"]}) < 2:
            raise RunFailed("svm chooses C by speaker-grouped cross-validation: the training part needs >= 2 speakers")

    def _functionals(self, ctx) -> str:
        if self.params.functionals != "auto":
            return self.params.functionals
        return "none" if ctx.spec.features.utterance_level else "stats"

    def build(self, ctx, start: nn.Module | None) -> nn.Module:
        return None  # fitted in train: its size is known only then

    def train(self, model, ctx) -> nn.Module:
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC

        functionals = self._functionals(ctx)
        data = ctx.data
        x = np.concatenate([_pack(data.train, functionals), _pack(data.val, functionals)])
        y = np.concatenate([data.train.labels.numpy(), data.val.labels.numpy()])
        groups = np.array(data.speakers["train"] + data.speakers["val"])
        if not np.isfinite(x).all():
            raise RunFailed("svm: the utterance features hold NaN or infinite values")
        class_weight = "balanced" if self.params.class_weight == "balanced" else None
        self.c, self.cv_scores = _choose_c(x, y, groups, class_weight, self.params.cv_folds)
        scaler = StandardScaler().fit(x)
        z = scaler.transform(x)
        svc = SVC(C=self.c, kernel="rbf", gamma="scale", class_weight=class_weight,
                  decision_function_shape="ovo").fit(z, y)
        model = to_module(svc, scaler, data.input_dim, data.num_classes, functionals)
        with torch.inference_mode():  # the module must decide as scikit-learn does
            ours = torch.cat([model.decision(f.unsqueeze(0), torch.tensor([f.shape[0]])) for f in data.train.features[:64]])
        reference = svc.decision_function(z[: len(ours)])
        present = list(svc.classes_)
        if len(present) == 2:
            ours, reference = ours[:, [list(itertools.combinations(range(data.num_classes), 2)).index(tuple(present))]], -reference[:, None]
        elif len(present) < data.num_classes:
            ours, reference = None, None  # pairs differ: the vote check below covers it
        if ours is not None and not np.allclose(ours.numpy(), reference, atol=1e-3, rtol=1e-3):
            raise RunFailed("svm: the shipped module disagrees with scikit-learn's decision values")
        self.num_support, self.dim = svc.support_vectors_.shape
        self.train_accuracy = float((svc.predict(z) == y).mean())
        return model

    def record(self) -> dict:
        return {"svm_c": self.c, "svm_cv_ua": self.cv_scores[self.c], "svm_cv_scores": {str(k): v for k, v in self.cv_scores.items()},
                "svm_support_vectors": self.num_support, "svm_feature_dim": self.dim,
                "svm_functionals": self.params.functionals, "svm_class_weight": self.params.class_weight,
                "svm_train_accuracy": self.train_accuracy}


def to_module(svc, scaler, input_dim: int, num_classes: int, functionals: str) -> FunctionalSVM:
    """The fitted scikit-learn scaler and ``SVC`` as a :class:`FunctionalSVM` (float32)."""
    support = svc.support_vectors_
    module = FunctionalSVM(input_dim, num_classes, len(support), functionals, svc._gamma)
    # libsvm's layout: support vectors grouped by class; dual_coef_[j - 1] holds class i's coefficients
    # against class j > i, dual_coef_[i] class j's against i.
    starts = np.concatenate([[0], np.cumsum(svc.n_support_)])
    dense = np.zeros((num_classes * (num_classes - 1) // 2, len(support)))
    present = list(svc.classes_)
    intercept = np.zeros(len(dense))
    for p, (i, j) in enumerate(itertools.combinations(range(num_classes), 2)):
        if i not in present or j not in present:  # a class absent from training never wins a pair
            intercept[p] = 1.0 if i in present else -1.0
            continue
        a, b = present.index(i), present.index(j)
        dense[p, starts[a]:starts[a + 1]] = svc.dual_coef_[b - 1, starts[a]:starts[a + 1]]
        dense[p, starts[b]:starts[b + 1]] = svc.dual_coef_[a, starts[b]:starts[b + 1]]
    pairs = list(itertools.combinations(range(num_classes), 2))
    for k, (a, b) in enumerate(itertools.combinations(range(len(present)), 2)):
        intercept[pairs.index((present[a], present[b]))] = svc.intercept_[k]
    if len(present) == 2:  # scikit-learn's binary SVC is signed for its second class; ours for the first
        p = pairs.index((present[0], present[1]))
        dense[p], intercept[p] = -svc.dual_coef_[0], -svc.intercept_[0]
    with torch.no_grad():
        module.mean.copy_(torch.from_numpy(scaler.mean_))
        module.scale.copy_(torch.from_numpy(scaler.scale_))
        module.support_vectors.copy_(torch.from_numpy(support))
        module.dual_coef.copy_(torch.from_numpy(dense))
        module.intercept.copy_(torch.from_numpy(intercept))
    return module.eval()
