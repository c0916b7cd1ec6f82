"""The ETL's stages after ingestion, declared once: one row per stage, one name per stage.

The table drives everything that lists stages:

* the ETL (:func:`chicago_crime.etl.run_stage` runs a row; ``run_all`` runs the table);
* the lake (:mod:`chicago_crime.layout`): the stage's folder ``2-processed-data/{stamp}/{name}/``
  (``enrich`` writes ``1-enriched-data/crimes_enriched_{stamp}*``) and its fitted object
  ``{name}.skops``;
* the served model (``model.train``): the fitted objects of the ``served`` rows, in table
  order, named like their stage, followed by the classifier;
* the DAG ``etl_with_taskflow``: one task per row, ``task_id`` = the stage name;
* the trusted types of :mod:`chicago_crime.serialization`.

Adding a stage = one row here + one estimator class in :mod:`chicago_crime.features`; its
source is the row above. A stage with an estimator fits it on its source's train set and
transforms train and test with it; an estimator with ``fit_resample`` (a sampler) resamples the
train set only and leaves the test set as it is. Constructor parameters named ``random_state``
and ``stations`` are filled with the run's seed and police station table.

This module imports nothing heavy: DAG files read it at parse time.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

#: The two rows with their own runners in :mod:`chicago_crime.etl` (the others are generic).
ENRICH = "enrich"
SPLIT = "split"


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str
    #: Class in :mod:`chicago_crime.features` the stage fits (None: no fitted object).
    estimator: str | None
    #: Whether the fitted object is a step of the served pipeline (named like the stage).
    served: bool
    #: What the stage does (the stage's report and the DAG task's documentation).
    description: str

    @property
    def task_id(self) -> str:
        """The task of ``etl_with_taskflow`` that runs the stage."""
        return self.name

    @property
    def fitted_file(self) -> str:
        """File name of the fitted object in the stage's lake folder."""
        return f"{self.name}.skops"

    def make(self, seed: int, stations: Any = None) -> Any:
        """A new, unfitted estimator of this stage."""
        if self.estimator is None:
            raise ValueError(f"stage {self.name!r} fits no estimator")
        from chicago_crime import features

        cls = getattr(features, self.estimator)
        wanted = inspect.signature(cls).parameters
        params = {k: v for k, v in (("random_state", seed), ("stations", stations))
                  if k in wanted}
        return cls(**params)


STAGES: tuple[Stage, ...] = (
    Stage(ENRICH, "CrimeEnricher", served=True,
          description="raw window -> typed columns, calendar features and the distance to the "
                      "nearest police station (EPSG:3435 feet)"),
    Stage(SPLIT, None, served=False,
          description="80/20 train/test split, stratified on arrest, seeded"),
    Stage("outliers", "OutlierHandler", served=True,
          description="log1p of the distance, Tukey-fence clipping and median imputation "
                      "fitted on train"),
    Stage("encode", "CrimeEncoder", served=True,
          description="one-hot, frequency and target encoding fitted on train"),
    Stage("scale", "RecordScaler", served=True,
          description="standard scaling fitted on train"),
    Stage("balance", "SmoteUnderSampler", served=False,
          description="SMOTE then random under-sampling of the train set (test unchanged)"),
    Stage("select", "MutualInfoSelector", served=True,
          description="the top mutual-information features, fitted on the balanced train set"),
)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def get(name: str) -> Stage:
    """The row named ``name``."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; expected one of {NAMES}")


def source(name: str) -> Stage | None:
    """The stage whose output ``name`` reads (None for the first)."""
    index = NAMES.index(get(name).name)
    return STAGES[index - 1] if index else None


def served() -> tuple[Stage, ...]:
    """The rows whose fitted objects make up the served pipeline, in order."""
    return tuple(s for s in STAGES if s.served)


def training_data() -> Stage:
    """The stage whose train/test sets the classifier is searched, fitted and evaluated on:
    the last served stage before the first unserved fitted one (balancing), i.e. unbalanced
    data (the search balances inside its folds), restricted to the selected features."""
    last = None
    for stage in STAGES:
        if stage.estimator and not stage.served:
            break
        if stage.served:
            last = stage
    if last is None:
        raise ValueError("no served stage before balancing")
    return last


def estimators(stations: Any, seed: int = 0) -> list[tuple[str, Any]]:
    """Every fitted stage's unfitted estimator, in order, named like its stage.

    ``imblearn.pipeline.Pipeline([*estimators(stations, seed), ("clf", model)])`` fits the
    whole ETL and the model in one go (samplers act in ``fit`` only): the served pipeline's
    shape, used by tests and benchmarks.
    """
    return [(s.name, s.make(seed, stations)) for s in STAGES if s.estimator]
