"""A fitted binary ``HistGradientBoostingClassifier``'s trees as flat arrays, for scoring a
few records at a time in microseconds.

Why this is hand-written: sklearn scores one record in ~13 ms with the served champion (157
trees): each call runs the categorical ``ColumnTransformer`` it builds at fit time (input
validation, ``OrdinalEncoder``) and then one Python-level dispatch per tree (~16 us each).
That is fine for large batches, where its Cython loop wins, but the API's single-record
``/predict`` must answer in a few milliseconds. LightGBM would score fast, but needs the
system ``libgomp`` in every image and its own serialisation; no tree compiler (treelite,
ONNX) reads sklearn's native categorical splits. So this module walks every tree at once with
numpy: ~0.5 ms per record for the champion.

It reads fitted attributes that sklearn keeps private (``_predictors``, ``_preprocessor``,
``_bin_mapper``, ``_baseline_prediction``) and reproduces ``_predict_one_from_raw_data``
(sklearn's ``_hist_gradient_boosting/_predictor.pyx``) branch for branch. It is never trusted
blindly: :func:`chicago_crime.model.predict.make_predictor` compares the path it is part of
with sklearn's own ``predict_proba`` when a model is loaded and serves sklearn's path if they
differ (e.g. after a scikit-learn upgrade changes those internals).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

#: From this many rows on, sklearn's compiled loop (one call per tree over all rows) is
#: faster than walking every tree at once: it then scores the rows :meth:`_encode` prepared,
#: which skips its ``ColumnTransformer`` (~40 % of sklearn's time for 1,000 records).
PER_TREE_ROWS = 64
#: Compiled trees per fitted estimator (built once, dropped with the estimator).
_CACHE: weakref.WeakKeyDictionary[Any, BoostedTrees] = weakref.WeakKeyDictionary()


class BoostedTrees:
    """All trees of one fitted binary ``HistGradientBoostingClassifier``, node arrays
    concatenated (child and bitset indices shifted to the global arrays)."""

    def __init__(self, hgb: Any) -> None:
        if getattr(hgb, "n_trees_per_iteration_", None) != 1:
            raise ValueError("only binary classifiers (one tree per iteration)")
        self.n_features = int(hgb.n_features_in_)
        preprocessor = getattr(hgb, "_preprocessor", None)
        if preprocessor is None:  # no categorical feature: columns go in as they are
            self.categorical = np.zeros(self.n_features, dtype=bool)
            self.categories: list[np.ndarray] = []
        else:
            self.categorical = np.asarray(hgb.is_categorical_, dtype=bool)
            encoder = preprocessor.named_transformers_["encoder"]
            # OrdinalEncoder's sorted categories; NaN (if seen) is last and stays missing.
            self.categories = [np.asarray(c, dtype=float)[~np.isnan(np.asarray(c, dtype=float))]
                               for c in encoder.categories_]
        predictors = [iteration[0] for iteration in hgb._predictors]
        nodes = np.concatenate([p.nodes for p in predictors])
        sizes = np.asarray([len(p.nodes) for p in predictors])
        node_offset = np.repeat(np.cumsum(sizes) - sizes, sizes)
        bitsets = [p.raw_left_cat_bitsets for p in predictors]
        bit_sizes = np.asarray([len(b) for b in bitsets])
        bit_offset = np.repeat(np.cumsum(bit_sizes) - bit_sizes, sizes)
        self.roots = (np.cumsum(sizes) - sizes).astype(np.intp)
        self.feature = nodes["feature_idx"].astype(np.intp)
        self.threshold = nodes["num_threshold"].astype(float)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.left = nodes["left"].astype(np.intp) + node_offset
        self.right = nodes["right"].astype(np.intp) + node_offset
        self.is_leaf = nodes["is_leaf"].astype(bool)
        self.is_categorical = nodes["is_categorical"].astype(bool)
        self.value = nodes["value"].astype(float)
        self.bitset = nodes["bitset_idx"].astype(np.intp) + bit_offset
        self.left_bitsets = (np.concatenate(bitsets) if bit_sizes.sum()
                             else np.zeros((1, 8), dtype=np.uint32))
        known, feature_map = hgb._bin_mapper.make_known_categories_bitsets()
        self.known_bitsets = known if len(known) else np.zeros((1, 8), dtype=np.uint32)
        self.known_index = feature_map.astype(np.intp)
        self._predictors = predictors
        self._known_bitsets, self._feature_map = known, feature_map
        self.depth = int(nodes["depth"].max()) + 1
        self.baseline = float(np.ravel(hgb._baseline_prediction)[0])

    @classmethod
    def of(cls, hgb: Any) -> BoostedTrees:
        """The compiled trees of ``hgb`` (cached while ``hgb`` lives)."""
        trees = _CACHE.get(hgb)
        if trees is None:
            trees = _CACHE[hgb] = cls(hgb)
        return trees

    def _encode(self, x: np.ndarray) -> np.ndarray:
        """What sklearn's fitted preprocessor outputs: each categorical column as the index of
        its value among the train categories (unknown or missing -> NaN) first, in column
        order, then the numeric columns."""
        if not self.categories:
            return x
        out = np.empty_like(x, dtype=float)
        for i, (column, known) in enumerate(zip(np.flatnonzero(self.categorical),
                                                self.categories, strict=True)):
            values = x[:, column]
            position = np.minimum(np.searchsorted(known, values), max(len(known) - 1, 0))
            hit = known[position] == values if len(known) else np.zeros(len(values), bool)
            out[:, i] = np.where(hit, position, np.nan)
        out[:, len(self.categories):] = x[:, ~self.categorical]
        return out

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds) of the rows of ``x`` (columns as at fit time)."""
        x = np.asarray(x, dtype=float)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got {x.shape}")
        x = self._encode(x)
        if len(x) >= PER_TREE_ROWS:
            return self._per_tree(x)
        n_rows, n_trees = x.shape[0], len(self.roots)
        rows = np.repeat(np.arange(n_rows), n_trees)
        node = np.tile(self.roots, n_rows)
        for _ in range(self.depth):
            inner = np.flatnonzero(~self.is_leaf[node])
            if not len(inner):
                break
            at = node[inner]
            value = x[rows[inner], self.feature[at]]
            missing = np.isnan(value)
            go_left = np.where(missing, self.missing_left[at], value <= self.threshold[at])
            categorical = np.flatnonzero(self.is_categorical[at] & ~missing)
            if len(categorical):
                cat_at = at[categorical]
                code = value[categorical].astype(np.intp)  # an index >= 0 (see _encode)
                word, bit = code >> 5, (code & 31).astype(np.uint32)
                in_left = (self.left_bitsets[self.bitset[cat_at], word] >> bit) & 1
                index = self.known_index[self.feature[cat_at]]
                known = (self.known_bitsets[index, word] >> bit) & 1
                # left-set -> left; other known category -> right; unknown -> as missing
                go_left[categorical] = np.where(in_left == 1, True,
                                                np.where(known == 1, False,
                                                         self.missing_left[cat_at]))
            node[inner] = np.where(go_left, self.left[at], self.right[at])
        return self.baseline + self.value[node].reshape(n_rows, n_trees).sum(axis=1)

    def _per_tree(self, x: np.ndarray) -> np.ndarray:
        """sklearn's own ``TreePredictor.predict`` per tree (what ``_raw_predict`` does after
        its preprocessor), on rows already encoded."""
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        x = np.ascontiguousarray(x, dtype=np.float64)
        threads = _openmp_effective_n_threads()
        raw = np.full(len(x), self.baseline)
        for predictor in self._predictors:
            raw += predictor.predict(x, self._known_bitsets, self._feature_map, threads)
        return raw
