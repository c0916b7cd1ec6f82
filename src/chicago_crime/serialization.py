"""Fitted objects as bytes: skops (no pickle), trusting only the types listed here.

Every fitted object the platform stores (the ETL's fitted stages in the lake; the served model
in MLflow, which passes :func:`trusted_types` to ``skops_trusted_types``) is saved with skops,
whose loader refuses any type it was not told to trust. The trusted types are declared in this
module's code, never read from the artifact being loaded: the project's own estimators (the
classes the stage table names, :mod:`chicago_crime.stages`) and the scikit-learn/imblearn
internals a fitted pipeline holds. :func:`dumps` refuses to save an object whose types
:func:`loads` would refuse, so a new type fails when it is written, not when it is served.

skops writes a zip whose member names and ``__id__`` fields are memory addresses and whose
timestamps are the current time, so the same object gives different bytes on every call.
:func:`dumps` renumbers both in order of appearance and fixes the timestamps: the same fitted
object gives the same bytes, and the ETL's reruns leave the lake's objects (and ETags)
unchanged.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Library types a fitted pipeline of the platform holds that skops does not trust by default.
LIBRARY_TYPES: tuple[str, ...] = (
    "imblearn.pipeline.Pipeline",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.frozen._frozen.FrozenEstimator",
    # A booster with native categorical splits on a DataFrame keeps a ColumnTransformer whose
    # numeric branch is ``FunctionTransformer(partial(check_array, ...))``. skops loads a
    # partial only if its function is trusted too: this pair admits that one call, no other.
    "functools.partial",
    "sklearn.utils.validation.check_array",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.model_selection._split.StratifiedKFold",
)
#: The package's training-time steps a served model holds besides the stage table's estimators
#: (the native booster family's category codes, ``model.tune.family_steps``).
MODEL_TYPES: tuple[str, ...] = ("chicago_crime.features.CategoryCodes",)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@contextmanager
def quiet_module_scan() -> Iterator[None]:
    """Silence the deprecation warnings Airflow's compatibility modules give while skops looks
    a function up in every imported module.

    skops names a function that lacks ``__module__`` (the ``scipy.special`` ufuncs, listed once
    when ``skops.io`` is imported; any such function in a saved object) by reading that
    attribute from each module in ``sys.modules`` (``skops.io._utils.whichmodule``); inside an
    Airflow task, every deprecated ``airflow.*`` shim answers with a warning: ~1,160 log lines
    per training task, none about this code. Only those warnings are ignored, only while skops
    is imported or runs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The `airflow\.", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"The `airflow\.", category=DeprecationWarning)
        yield


@contextmanager
def _skops() -> Iterator[Any]:
    """``skops.io``, imported and used inside :func:`quiet_module_scan`."""
    with quiet_module_scan():
        import skops.io

        yield skops.io


class UntrustedTypeError(TypeError):
    """An object holds types :func:`loads` would refuse."""


def trusted_types() -> list[str]:
    """The types skops may load: the stage table's estimators and :data:`LIBRARY_TYPES`."""
    from chicago_crime.stages import STAGES

    own = [f"chicago_crime.features.{s.estimator}" for s in STAGES if s.estimator]
    return sorted({*own, *MODEL_TYPES, *LIBRARY_TYPES})


def untrusted(data: bytes) -> list[str]:
    """Types in a skops blob that :func:`trusted_types` does not cover."""
    with _skops() as sio:
        return sorted(set(sio.get_untrusted_types(data=data)) - set(trusted_types()))


def check_trusted(obj: Any) -> None:
    """Raise :class:`UntrustedTypeError` if ``obj`` holds a type :func:`loads` refuses."""
    with _skops() as sio:
        blob = sio.dumps(obj)
    unexpected = untrusted(blob)
    if unexpected:
        raise UntrustedTypeError(
            f"{type(obj).__name__} holds types that are not trusted: {unexpected}; add them to "
            "chicago_crime.serialization.LIBRARY_TYPES only if they are safe to load")


def _canonical(blob: bytes) -> bytes:
    """The skops zip with memory ids renumbered and fixed timestamps (see the module doc)."""
    source = zipfile.ZipFile(io.BytesIO(blob))
    schema = json.loads(source.read("schema.json"))
    ids: dict[Any, int] = {}
    files: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__id__" in node:
                node["__id__"] = ids.setdefault(node["__id__"], len(ids))
            if isinstance(node.get("file"), str):
                name = node["file"]
                files.setdefault(name, f"{len(files)}{name[name.rfind('.'):]}")
                node["file"] = files[name]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as target:
        for old, new in sorted(files.items(), key=lambda kv: kv[1]):
            target.writestr(zipfile.ZipInfo(new, _FIXED_TIME), source.read(old),
                            compress_type=zipfile.ZIP_DEFLATED)
        target.writestr(zipfile.ZipInfo("schema.json", _FIXED_TIME),
                        json.dumps(schema, indent=1), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def dumps(obj: Any) -> bytes:
    """``obj`` as deterministic skops bytes; refuses types :func:`loads` would not load."""
    with _skops() as sio:
        blob = sio.dumps(obj)
    unexpected = untrusted(blob)
    if unexpected:
        raise UntrustedTypeError(f"{type(obj).__name__} holds untrusted types: {unexpected}")
    return _canonical(blob)


def loads(data: bytes) -> Any:
    """An object saved by :func:`dumps` (or any skops blob holding only trusted types)."""
    with _skops() as sio:
        return sio.loads(data, trusted=trusted_types())
