"""Fitted objects as skops bytes: deterministic, loaded only with the package's trusted types."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_array

from chicago_crime import serialization, stages
from chicago_crime.features import CrimeEncoder, RecordScaler


class Gadget(BaseEstimator):
    """A type nobody declared trusted."""

    def __init__(self, value: int = 1) -> None:
        self.value = value


SCRIPT = """
import sys
import numpy as np
from chicago_crime import serialization
from chicago_crime.features import RecordScaler
rng = np.random.default_rng(0)
scaler = RecordScaler().fit(rng.normal(size=(50, 3)))
sys.stdout.buffer.write(serialization.dumps([scaler, scaler]))
"""


def test_the_same_object_gives_the_same_bytes_in_every_process():
    runs = [subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True,
                           timeout=120).stdout for _ in range(2)]
    assert runs[0] == runs[1] and runs[0][:2] == b"PK"
    first, second = serialization.loads(runs[0])
    assert first is second  # shared references survive the renumbering
    assert isinstance(first, RecordScaler) and first.mean_.shape == (3,)


def test_round_trip_keeps_the_fitted_state():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    scaler = RecordScaler().fit(X)
    loaded = serialization.loads(serialization.dumps(scaler))
    np.testing.assert_array_equal(loaded.transform(X).to_numpy(), scaler.transform(X).to_numpy())
    assert isinstance(StandardScaler().fit(X), StandardScaler)


def test_untrusted_types_are_refused_when_saving_and_when_loading():
    with pytest.raises(serialization.UntrustedTypeError, match="Gadget"):
        serialization.dumps(Gadget())
    with pytest.raises(serialization.UntrustedTypeError, match="Gadget"):
        serialization.check_trusted([Gadget()])
    crafted = skops.io.dumps(Gadget())  # as an attacker would write it: loading must refuse
    with pytest.raises(Exception, match="Gadget"):
        serialization.loads(crafted)


def test_a_partial_of_an_untrusted_function_is_refused():
    """``functools.partial`` is trusted for the booster's ``partial(check_array)`` only: a
    partial of anything else names that function and is refused."""
    crafted = skops.io.dumps(functools.partial(os.system, "echo pwned"))
    assert "posix.system" in serialization.untrusted(crafted)
    with pytest.raises(Exception, match="system"):
        serialization.loads(crafted)
    booster = functools.partial(check_array, ensure_all_finite=False)
    assert serialization.loads(serialization.dumps(booster)).func is check_array


def test_trusted_types_come_from_the_package_not_the_artifact():
    trusted = serialization.trusted_types()
    own = {f"chicago_crime.features.{s.estimator}" for s in stages.STAGES if s.estimator}
    assert own <= set(trusted) and set(serialization.LIBRARY_TYPES) <= set(trusted)
    assert not any(t.startswith("tests.") or "Gadget" in t for t in trusted)
    assert "chicago_crime.features.CrimeEncoder" in trusted and CrimeEncoder


SHIM_SCRIPT = """
import sys, types, warnings
shim = types.ModuleType("airflow.utils.fake_shim")  # what Airflow 3's moved-name shims do
def __getattr__(name):
    if not name.startswith("__"):
        warnings.warn(f"The `airflow.utils.fake_shim.{name}` attribute is deprecated.",
                      FutureWarning, stacklevel=2)
    raise AttributeError(name)
shim.__getattr__ = __getattr__
sys.modules[shim.__name__] = shim
warnings.simplefilter("always")
heard = []
warnings.showwarning = lambda message, *args, **kw: heard.append(str(message))
import numpy as np
from chicago_crime import serialization
from chicago_crime.features import RecordScaler
if sys.argv[1] == "raw":
    import skops.io
    skops.io.dumps(RecordScaler().fit(np.ones((3, 2))))
else:
    serialization.loads(serialization.dumps(RecordScaler().fit(np.ones((3, 2)))))
    serialization.check_trusted(RecordScaler())
warnings.warn("a warning of this script's own", UserWarning)
print(sum("airflow.utils.fake_shim" in m for m in heard), len(heard))
"""


@pytest.mark.parametrize("path", ["raw", "package"])
def test_saving_and_loading_do_not_flood_a_task_log_with_airflow_deprecations(path):
    """Inside an Airflow task, skops reads every scipy.special ufunc's name from each module
    in sys.modules; Airflow's deprecated-name shims warned ~1,160 times per training task.
    The package's saving and loading hear none of them, and other warnings still show."""
    out = subprocess.run([sys.executable, "-c", SHIM_SCRIPT, path], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONWARNINGS": ""})
    shim_warnings, all_warnings = map(int, out.stdout.split())
    if path == "raw":  # what skops alone does: the check sees the flood it guards against
        assert shim_warnings > 100
    else:
        assert shim_warnings == 0
        assert all_warnings >= 1  # warnings of other origins are untouched
