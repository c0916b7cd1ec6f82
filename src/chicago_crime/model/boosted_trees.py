"""A fitted binary ``HistGradientBoostingClassifier``'s trees as flat arrays, for scoring a
few records at a time in a fraction of a millisecond.

Why this is hand-written: sklearn scores one record in ~13 ms with the served champion (157
trees): each call runs the categorical ``ColumnTransformer`` it builds at fit time (input
validation, ``OrdinalEncoder``) and then one Python-level dispatch per tree (~16 us each).
That is fine for large batches, where its Cython loop wins, but the API's single-record
``/predict`` must answer in a few milliseconds. LightGBM would score fast, but needs the
system ``libgomp`` in every image and its own serialisation; no tree compiler (treelite,
ONNX) reads sklearn's native categorical splits. So this module walks every tree at once with
numpy, one step per tree level: ~0.2 ms per record for the champion (``bench/bench_api.py``).
From :data:`PER_TREE_ROWS` rows on it hands the rows it encoded to sklearn's per-tree loop.

It reads fitted attributes that sklearn keeps private (``_predictors``, ``_preprocessor``,
``_bin_mapper``, ``_baseline_prediction``) and follows ``_predict_one_from_raw_data``
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
#: Widest integer category encoded by table lookup (larger ones: a binary search per column).
LOOKUP_WIDTH = 1024
#: Compiled trees per fitted estimator (built once, dropped with the estimator).
_CACHE: weakref.WeakKeyDictionary[Any, BoostedTrees] = weakref.WeakKeyDictionary()


class BoostedTrees:
    """All trees of one fitted binary ``HistGradientBoostingClassifier``, node arrays
    concatenated (child indices shifted to the global arrays, leaves pointing to themselves)."""

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
        leaf = nodes["is_leaf"].astype(bool)
        here = np.arange(len(nodes), dtype=np.intp)
        # A leaf points to itself and never goes right, so every tree can take the same
        # number of steps (the deepest tree's depth) without per-step bookkeeping.
        self.feature = np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp)
        self.threshold = np.where(leaf, np.inf, nodes["num_threshold"]).astype(float)
        self.missing_left = nodes["missing_go_to_left"].astype(bool) | leaf
        self.left = np.where(leaf, here, nodes["left"].astype(np.intp) + node_offset)
        self.right = np.where(leaf, here, nodes["right"].astype(np.intp) + node_offset)
        self.is_categorical = nodes["is_categorical"].astype(bool) & ~leaf
        self.value = nodes["value"].astype(float)
        self.depth = int(nodes["depth"].max())
        self.baseline = float(np.ravel(hgb._baseline_prediction)[0])
        # Categorical splits as a table: row = categorical node, column = category index
        # (< 256, the bin limit) -> go left? In the left bitset: left; another category the
        # booster knows: right; a category unknown to it: the missing-value side.
        known, feature_map = hgb._bin_mapper.make_known_categories_bitsets()
        split = np.flatnonzero(self.is_categorical)
        self.table_row = np.full(len(nodes), len(split), dtype=np.intp)  # numeric: a spare row
        self.table_row[split] = np.arange(len(split))
        index = np.arange(256)
        word, bit = index >> 5, (index & 31).astype(np.uint32)
        bitset_of = nodes["bitset_idx"].astype(np.intp)[split] + bit_offset[split]
        in_left = (np.concatenate(bitsets)[bitset_of][:, word] >> bit) & 1
        is_known = (known[feature_map[self.feature[split]]][:, word] >> bit) & 1
        table = np.where(in_left == 1, True,
                         np.where(is_known == 1, False, self.missing_left[split][:, None]))
        self.table = np.vstack([table, np.zeros((1, 256), dtype=bool)])
        self._predictors = predictors
        self._known_bitsets, self._feature_map = known, feature_map
        # Categories that are small non-negative integers (CategoryCodes' output) are encoded
        # with one lookup: lookup[column, value] = the category's index (NaN: unknown).
        whole = [c for c in self.categories if len(c) and np.all(c == np.floor(c)) and c[0] >= 0]
        self.lookup: np.ndarray | None = None
        if self.categories and len(whole) == len(self.categories) and \
                max(c[-1] for c in whole) < LOOKUP_WIDTH:
            self.lookup = np.full((len(whole), LOOKUP_WIDTH), np.nan)
            for i, c in enumerate(whole):
                self.lookup[i, c.astype(np.intp)] = np.arange(len(c))
        self.categorical_columns = np.flatnonzero(self.categorical)

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
        if self.lookup is not None:
            values = x[:, self.categorical_columns]
            usable = (values >= 0) & (values < LOOKUP_WIDTH) & (values == np.floor(values))
            column = np.arange(values.shape[1])
            out[:, :len(self.categories)] = np.where(
                usable, self.lookup[column, np.where(usable, values, 0).astype(np.intp)], np.nan)
            out[:, len(self.categories):] = x[:, ~self.categorical]
            return out
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
            value = x[rows, self.feature[node]]
            missing = np.isnan(value)
            categorical = self.is_categorical[node]
            index = np.where(categorical & ~missing, value, 0).astype(np.intp)  # see _encode
            go_left = np.where(missing, self.missing_left[node],
                               np.where(categorical, self.table[self.table_row[node], index],
                                        value <= self.threshold[node]))
            node = np.where(go_left, self.left[node], self.right[node])
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
