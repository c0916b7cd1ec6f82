"""Feature transformers on real Chicago data: geometry, calendar features, encodings,
balancing, selection, and the per-record serving path against the batch path."""

from __future__ import annotations

import io
import math
import pickle
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import skops.io
from hypothesis import given, settings
from hypothesis import strategies as st
from imblearn.pipeline import Pipeline
from pyproj import Geod
from scipy.spatial import cKDTree
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from chicago_crime import features as F
from chicago_crime import layout, portal, stages
from chicago_crime import record as R
from chicago_crime.model.predict import RecordPredictor

US_FOOT_M = 1200 / 3937  # EPSG:3435 unit (US survey foot) in metres
MONTHS = ("2018-05", "2018-06")


@pytest.fixture(scope="module")
def stations(shared_data) -> pd.DataFrame:
    return portal.read_export(shared_data / "police_stations.csv")


@pytest.fixture(scope="module")
def raw(shared_data) -> pd.DataFrame:
    frames = [portal.read_export(portal.crimes_export_path(shared_data, m)) for m in MONTHS]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def target(raw) -> pd.Series:
    return raw["arrest"].map({"true": True, "false": False}).astype(bool)


@pytest.fixture(scope="module")
def enricher(stations) -> F.CrimeEnricher:
    return F.CrimeEnricher(stations).fit()


@pytest.fixture(scope="module")
def enriched(enricher, raw) -> pd.DataFrame:
    return enricher.transform(raw)


@pytest.fixture(scope="module")
def fitted_pipeline(stations, raw, target) -> Pipeline:
    steps = stages.estimators(stations, seed=7)
    steps[-1][1].set_params(k=15)  # select
    pipe = Pipeline([*steps, ("clf", LogisticRegression(max_iter=500))])
    return pipe.fit(raw, target)


def _same(a: object, b: object) -> bool:
    """Equality where two missing values (None/NaN) are equal."""
    if R.is_missing(a) or R.is_missing(b):
        return R.is_missing(a) and R.is_missing(b)
    return a == b


def _assert_records_equal(batch: pd.DataFrame, records: list[dict]) -> None:
    assert list(batch.columns) == list(records[0].keys())
    mismatches = [
        (i, col, row[col], records[i][col])
        for i, row in enumerate(batch.to_dict("records")) for col in batch.columns
        if not _same(row[col], records[i][col])
    ]
    assert not mismatches, mismatches[:10]


# -- enrichment: geometry -----------------------------------------------------------------------
def test_headquarters_is_not_a_district_station(enricher, enriched, stations):
    assert "Headquarters" in set(stations["district"])
    assert len(enricher.station_district_) == len(stations) - 1
    assert all(d.isdigit() for d in enricher.station_district_)
    assert set(enriched[F.STATION_COL].dropna()) <= set(enricher.station_district_)


def test_distance_and_nearest_station_match_kdtree(enricher, enriched, raw, stations):
    st = stations[stations["district"] != "Headquarters"]
    sx, sy = st["x_coordinate"].astype(float), st["y_coordinate"].astype(float)
    tree = cKDTree(np.column_stack([sx, sy]))
    has = raw["x_coordinate"].notna() & raw["y_coordinate"].notna()
    pts = np.column_stack([raw.loc[has, "x_coordinate"].astype(float),
                           raw.loc[has, "y_coordinate"].astype(float)])
    dist_ft, idx = tree.query(pts)
    ours = enriched.loc[has, F.DIST_COL].to_numpy()
    assert np.abs(ours - dist_ft).max() * US_FOOT_M < 1.0
    expected = [str(int(d)) for d in st["district"].to_numpy()[idx]]
    assert enriched.loc[has, F.STATION_COL].tolist() == expected


def test_distance_agrees_with_geodesic_within_one_metre(enriched, raw, stations):
    st = stations[stations["district"] != "Headquarters"].copy()
    st["key"] = st["district"].astype(int).astype(str)
    has = raw["latitude"].notna() & enriched[F.STATION_COL].notna()
    sample = raw[has].sample(3000, random_state=0)
    near = enriched.loc[sample.index, F.STATION_COL].map(st.set_index("key")["latitude"])
    near_lon = enriched.loc[sample.index, F.STATION_COL].map(st.set_index("key")["longitude"])
    _, _, metres = Geod(ellps="GRS80").inv(
        sample["longitude"].astype(float).to_numpy(), sample["latitude"].astype(float).to_numpy(),
        near_lon.astype(float).to_numpy(), near.astype(float).to_numpy())
    ours = enriched.loc[sample.index, F.DIST_COL].to_numpy() * US_FOOT_M
    assert np.abs(ours - metres).max() < 1.0


def test_rows_without_coordinates_are_kept_with_missing_distance(raw, enriched):
    assert len(enriched) == len(raw)
    no_xy = raw["x_coordinate"].isna() & raw["latitude"].isna()
    assert no_xy.sum() > 0
    assert enriched.loc[no_xy, F.DIST_COL].isna().all()
    assert enriched.loc[no_xy, F.STATION_COL].isna().all()
    assert enriched.loc[~no_xy, F.DIST_COL].notna().all()


def test_lat_lon_is_projected_when_x_y_are_missing(enricher, raw, enriched):
    sample = raw[raw["x_coordinate"].notna()].sample(500, random_state=1).copy()
    sample[["x_coordinate", "y_coordinate"]] = None
    projected = enricher.transform(sample)
    reference = enriched.loc[sample.index]
    # the portal rounds x/y to whole feet, so projected lat/lon agree within a few feet
    gap = np.abs(projected[F.DIST_COL] - reference[F.DIST_COL]) * US_FOOT_M
    assert gap.max() < 1.0
    assert (projected[F.STATION_COL] == reference[F.STATION_COL]).mean() > 0.99


# -- enrichment: nearest station, matrix and sjoin_nearest paths --------------------------------
@pytest.fixture(scope="module")
def window_xy(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """Located EPSG:3435 points of every record of the 12-month window ending 2018-06."""
    months = layout.month_range("2018-06", 12)
    frames = [portal.read_export(portal.crimes_export_path(shared_data, m)) for m in months]
    raw12 = pd.concat(frames, ignore_index=True)
    x, y = R.frame_coordinates(raw12)
    located = ~np.isnan(x) & ~np.isnan(y)
    assert sorted(raw12["date"].str[:7].unique()) == months
    assert len(raw12) > 2 * F.MATRIX_NEAREST_MAX_ROWS and located.sum() > 0.98 * len(raw12)
    return x[located], y[located]


def test_matrix_and_sjoin_nearest_are_identical_on_the_12_month_window(enricher, window_xy):
    x, y = window_xy
    dist_sjoin, best_sjoin = enricher._nearest_sjoin(x, y)
    size = F.MATRIX_NEAREST_MAX_ROWS
    parts = [enricher._nearest_matrix(x[i:i + size], y[i:i + size])
             for i in range(0, len(x), size)]
    dist_matrix = np.concatenate([d for d, _ in parts])
    best_matrix = np.concatenate([b for _, b in parts])
    np.testing.assert_array_equal(best_matrix, best_sjoin)
    np.testing.assert_array_equal(dist_matrix, dist_sjoin)  # bitwise, not approximately


def test_transform_uses_the_matrix_below_the_size_limit_and_sjoin_above(
        enricher, raw, enriched, monkeypatch):
    calls: list[str] = []
    for name in ("_nearest_matrix", "_nearest_sjoin"):
        method = getattr(F.CrimeEnricher, name)
        monkeypatch.setattr(F.CrimeEnricher, name,
                            lambda self, x, y, m=method, n=name: calls.append(n) or m(self, x, y))
    small = raw.sample(F.MATRIX_NEAREST_MAX_ROWS, random_state=8)
    pd.testing.assert_frame_equal(enricher.transform(small), enriched.loc[small.index])
    assert calls == ["_nearest_matrix"]
    assert len(raw) > F.MATRIX_NEAREST_MAX_ROWS
    monkeypatch.setattr(F, "MATRIX_NEAREST_MAX_ROWS", 10 ** 9)
    pd.testing.assert_frame_equal(enricher.transform(raw), enriched)
    assert calls == ["_nearest_matrix", "_nearest_matrix"]


def test_equidistant_stations_resolve_to_the_lowest_district_in_every_path():
    cx, cy = 1_150_000.0, 1_900_000.0
    # districts 9, 3 and 5 exactly 300 ft from the point (300, 0), (-180, 240), (0, -300)
    table = pd.DataFrame({"district": ["9", "3", "5", "1"],
                          "x_coordinate": [cx + 300, cx - 180, cx, cx + 5000],
                          "y_coordinate": [cy, cy + 240, cy - 300, cy + 5000]})
    enr = F.CrimeEnricher(table).fit()
    assert enr.station_district_ == ["1", "3", "5", "9"]
    point = {"x_coordinate": cx, "y_coordinate": cy}
    x, y = np.array([cx, cx + 300.0]), np.array([cy, cy + 300.0])
    for find in (enr._nearest_matrix, enr._nearest_sjoin):
        dist, best = find(x, y)
        assert [enr.station_district_[b] for b in best] == ["3", "9"]
        assert dist.tolist() == [300.0, 300.0]
    assert enr.transform_record(point)[F.STATION_COL] == "3"
    assert enr.transform(pd.DataFrame([point]))[F.STATION_COL].tolist() == ["3"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20), st.floats(),
    st.floats(allow_nan=False).map(str), st.integers().map(lambda i: f" {i} "),
    st.sampled_from(["", " ", "nan", "-inf", "1e400", "1_000", "abc", "0x10"]), st.text(),
), min_size=1, max_size=30))
def test_vectorised_float_column_equals_to_float_per_value(values):
    frame = pd.DataFrame({"v": pd.Series(values, dtype=object)})
    expected = [R.to_float(v) for v in values]
    np.testing.assert_array_equal(R.floats(frame, "v"), np.array(expected, dtype=float))


def test_datetime_date_column_gives_the_same_calendar_as_strings(enricher):
    text = pd.Series(["2018-06-04T13:05:00.000", None, "2017-12-31T23:59:59.000"])
    as_dates = pd.DataFrame({"date": pd.to_datetime(text)})
    assert as_dates["date"].dtype.kind == "M"
    a = enricher.transform(as_dates)
    b = enricher.transform(pd.DataFrame({"date": text}))
    pd.testing.assert_frame_equal(a, b)
    assert a["hour"].tolist()[::2] == [13.0, 23.0] and math.isnan(a["hour"].iloc[1])


# -- serialisation --------------------------------------------------------------------------------
def test_fitted_enricher_round_trips_through_skops_and_still_clones(enricher, stations, raw):
    blob = skops.io.dumps(enricher)
    assert skops.io.get_untrusted_types(data=blob) == ["chicago_crime.features.CrimeEnricher"]
    loaded = skops.io.loads(blob, trusted=["chicago_crime.features.CrimeEnricher"])
    assert isinstance(enricher.stations, pd.DataFrame)  # the live object is untouched
    assert loaded.stations == F.plain_station_table(stations)
    assert not any(isinstance(v, pd.DataFrame | pd.Series) for v in vars(loaded).values())
    sample = raw.sample(2000, random_state=9)
    pd.testing.assert_frame_equal(loaded.transform(sample), enricher.transform(sample))
    refit = clone(loaded).fit()
    assert refit.station_district_ == enricher.station_district_
    np.testing.assert_array_equal(refit.station_x_, enricher.station_x_)
    assert clone(enricher).get_params()["stations"] is not enricher.stations
    pd.testing.assert_frame_equal(clone(enricher).get_params()["stations"], stations)


def test_fitted_pipeline_saves_with_skops_and_predicts_the_same(fitted_pipeline, raw):
    blob = skops.io.dumps(fitted_pipeline)
    loaded = skops.io.loads(blob, trusted=skops.io.get_untrusted_types(data=blob))
    sample = raw.sample(300, random_state=10)
    np.testing.assert_array_equal(loaded.predict_proba(sample),
                                  fitted_pipeline.predict_proba(sample))


# -- enrichment: calendar -----------------------------------------------------------------------
def test_season_boundaries_exact(enricher):
    cases = {1: "Winter", 2: "Winter", 3: "Spring", 5: "Spring", 6: "Summer", 8: "Summer",
             9: "Fall", 11: "Fall", 12: "Winter"}
    for month, season in cases.items():
        first = datetime(2018, month, 1, 0, 0)
        last = (datetime(2018 + month // 12, month % 12 + 1, 1) - timedelta(seconds=1))
        for moment in (first, last):
            rec = {"date": moment.strftime(portal.SODA_DATE_FORMAT)}
            assert enricher.transform_record(rec)["season"] == season, moment
    df = enricher.transform(pd.DataFrame({"date": ["2018-02-28T23:59:59.000",
                                                   "2018-03-01T00:00:00.000",
                                                   "2017-11-30T23:59:59.000",
                                                   "2017-12-01T00:00:00.000"]}))
    assert df["season"].tolist() == ["Winter", "Spring", "Fall", "Winter"]


@pytest.mark.parametrize(("clock", "label"), [
    ("00:00:00", "Night"), ("05:59:59", "Night"), ("06:00:00", "Morning"),
    ("11:59:59", "Morning"), ("12:00:00", "Afternoon"), ("17:59:59", "Afternoon"),
    ("18:00:00", "Evening"), ("21:59:59", "Evening"), ("22:00:00", "Night"),
    ("23:59:59", "Night"),
])
def test_day_time_boundaries_exact(enricher, clock, label):
    rec = {"date": f"2018-06-04T{clock}.000"}
    assert enricher.transform_record(rec)["day_time"] == label
    assert enricher.transform(pd.DataFrame([rec]))["day_time"].iloc[0] == label


def test_calendar_features_match_pandas_on_real_dates(raw, enriched):
    when = pd.to_datetime(raw["date"], format="%Y-%m-%dT%H:%M:%S.000")
    assert (enriched["day_of_week"] == when.dt.dayofweek).all()  # Monday = 0
    assert (enriched["hour"] == when.dt.hour).all()
    assert (enriched["month"] == when.dt.month).all()
    assert datetime(2018, 6, 4).weekday() == 0


@pytest.mark.parametrize(("moment", "expected"), [
    ("2018-06-04T13:07:00.000", (7, 4, 0, 0, 0, 0)),
    ("2018-06-04T13:05:00.000", (5, 4, 0, 1, 0, 0)),
    ("2018-06-01T13:00:00.000", (0, 1, 1, 1, 0, 0)),
    ("2018-06-04T00:00:00.000", (0, 4, 1, 1, 1, 0)),
    ("2018-06-04T12:00:00.000", (0, 4, 1, 1, 0, 1)),
    ("2018-06-04T00:30:00.000", (30, 4, 0, 1, 0, 0)),
])
def test_time_quality_flags(enricher, moment, expected):
    rec = {"date": moment}
    assert tuple(enricher.transform_record(rec)[c] for c in F.TIME_QUALITY_COLUMNS) == expected
    frame = enricher.transform(pd.DataFrame([rec]))
    assert tuple(frame[c].iloc[0] for c in F.TIME_QUALITY_COLUMNS) == expected


def test_time_quality_is_missing_without_a_date(enricher):
    for values in (enricher.transform_record({"date": None}),
                   enricher.transform(pd.DataFrame({"date": [None]})).iloc[0].to_dict()):
        assert all(math.isnan(values[c]) for c in F.TIME_QUALITY_COLUMNS)


def test_time_quality_on_real_dates(raw, enriched):
    """The portal's own dates: a sizeable share is rounded (the flags carry signal)."""
    when = pd.to_datetime(raw["date"], format="%Y-%m-%dT%H:%M:%S.000")
    assert (enriched["minute"] == when.dt.minute).all()
    assert (enriched["day_of_month"] == when.dt.day).all()
    share = enriched["on_the_hour"].mean()
    assert 0.1 < share < 0.5, share
    assert (enriched["on_five_minutes"] >= enriched["on_the_hour"]).all()


def test_types_as_read_back_from_csv_give_the_same_features(enricher, raw, enriched):
    """The window CSV read back by pandas has ints/bools where the API has strings."""
    typed = pd.read_csv(io.StringIO(raw.to_csv(index=False)))
    assert typed["beat"].dtype.kind == "i" and typed["arrest"].dtype == bool
    again = enricher.transform(typed)
    pd.testing.assert_frame_equal(again, enriched)


# -- per-record path ------------------------------------------------------------------------------
def test_transform_record_equals_transform_for_each_step(fitted_pipeline, raw):
    sample = raw.sample(2500, random_state=3)
    records = sample.to_dict("records")
    frame = sample.reset_index(drop=True)
    current_records = records
    for name, step in fitted_pipeline.steps[:-1]:
        if hasattr(step, "fit_resample"):
            continue
        frame = step.transform(frame)
        current_records = [step.transform_record(r) for r in current_records]
        _assert_records_equal(frame.reset_index(drop=True), current_records)
        assert list(frame.columns) == list(step.get_feature_names_out()), name


def test_record_chain_gives_pipeline_probabilities(fitted_pipeline, raw):
    sample = raw.sample(1000, random_state=4)
    batch = fitted_pipeline.predict_proba(sample)[:, 1]
    predictor = RecordPredictor(fitted_pipeline, pandas_above=None)
    single = [predictor.predict_proba_records([r])[0] for r in sample.to_dict("records")]
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-12)


def test_api_style_record_with_extra_fields_and_string_numbers(fitted_pipeline, raw):
    rec = raw.iloc[0].to_dict()
    api = {k: (None if R.is_missing(v) else v) for k, v in rec.items()}
    api.update({"location": {"type": "Point"}, "unexpected": "ignored"})
    typed = dict(api, beat=int(api["beat"]), domestic=api["domestic"] == "true",
                 ward=float(api["ward"]), primary_type=f"  {api['primary_type'].lower()} ")
    predictor = RecordPredictor(fitted_pipeline)
    a, b = predictor.transform_record(api), predictor.transform_record(typed)
    assert a == b
    assert all(np.isfinite(v) for v in a)


def test_pickled_pipeline_predicts_the_same(fitted_pipeline, raw):
    sample = raw.sample(300, random_state=5)
    clone = pickle.loads(pickle.dumps(fitted_pipeline))
    np.testing.assert_array_equal(clone.predict_proba(sample),
                                  fitted_pipeline.predict_proba(sample))


# -- outliers, encoding, scaling ---------------------------------------------------------------
def test_outlier_bounds_fitted_on_train_and_rows_kept(enriched):
    train, test = enriched.iloc[:30000], enriched.iloc[30000:].copy()
    handler = F.OutlierHandler().fit(train)
    logged = np.log1p(train[F.DIST_COL].dropna())
    q1, q3 = np.quantile(logged, [0.25, 0.75])
    assert handler.bounds_[F.DIST_COL] == pytest.approx((q1 - 1.5 * (q3 - q1),
                                                         q3 + 1.5 * (q3 - q1)))
    test[F.DIST_COL] = test[F.DIST_COL] * 1000  # absurd test values change nothing fitted
    again = F.OutlierHandler().fit(train)
    assert again.bounds_ == handler.bounds_ and again.medians_ == handler.medians_
    out = handler.transform(test)
    lo, hi = handler.bounds_[F.DIST_COL]
    assert len(out) == len(test)
    assert out["log1p_" + F.DIST_COL].between(lo, hi).all()
    assert out.select_dtypes("number").notna().all().all()
    missing = test[F.DIST_COL].isna()
    assert (out[F.DIST_COL + "_missing"] == missing.astype(float)).all()


def test_encoder_handles_unseen_and_missing_categories(enriched, target):
    enc = F.CrimeEncoder(random_state=0).fit(enriched, target)
    row = enriched.iloc[[0]].copy()
    row["iucr"], row["season"], row["beat"] = "ZZZZ", "Monsoon", None
    out = enc.transform(row).iloc[0]
    assert out["iucr_te"] == pytest.approx(enc.target_mean_)
    assert out["iucr_freq"] == 0.0
    assert enc.onehot_["season"] == ["Spring", "Summer"]  # May and June only
    assert all(out[f"season_{s}"] == 0.0 for s in enc.onehot_["season"])
    assert np.isfinite(out["beat_te"])
    assert enc.target_mean_ == pytest.approx(target.mean())
    # one-hot for low cardinality, target encoding for the rest
    names = set(enc.get_feature_names_out())
    assert {"season_Summer", "day_time_Night", "iucr_te", "primary_type_te",
            "location_description_te", "beat_te", "iucr_freq"} <= names


def test_encoder_is_deterministic(enriched, target):
    train, y = enriched.iloc[:30000], target.iloc[:30000]
    a = F.CrimeEncoder(random_state=3).fit_transform(train, y)
    b = F.CrimeEncoder(random_state=3).fit_transform(train, y)
    pd.testing.assert_frame_equal(a, b)


def test_scaler_standardises_train(enriched, target):
    steps = stages.estimators(pd.DataFrame(), 0)[1:4]  # outliers, encode, scale
    X = enriched
    for _, step in steps:
        X = step.fit_transform(X, target)
    assert isinstance(X, pd.DataFrame)
    assert np.allclose(X.mean(), 0, atol=1e-9)
    assert np.allclose(X.std(ddof=0)[X.std(ddof=0) > 0], 1)


# -- balancing and selection -------------------------------------------------------------------
@pytest.mark.parametrize("final_ratio", [1.0, 0.8])
def test_balancer_reaches_configured_ratio_and_snaps_discrete(enriched, target, final_ratio):
    X = enriched.select_dtypes("number").fillna(0)
    balancer = F.SmoteUnderSampler(smote_ratio=0.5, final_ratio=final_ratio, random_state=1)
    Xr, yr = balancer.fit_resample(X, target)
    counts = pd.Series(yr).value_counts()
    assert counts[True] / counts[False] == pytest.approx(final_ratio, abs=1e-3)
    assert counts[True] > target.sum()  # SMOTE added minority rows
    assert set(Xr["hour"].unique()) <= set(X["hour"].unique())
    assert set(Xr["domestic"].unique()) <= {0.0, 1.0}
    Xr2, _ = clone(balancer).fit_resample(X, target)
    pd.testing.assert_frame_equal(Xr, Xr2)


def test_selector_keeps_informative_features_and_records_scores():
    rng = np.random.RandomState(0)
    y = rng.rand(5000) < 0.3
    X = pd.DataFrame({"noise": rng.randn(5000), "signal": y + rng.randn(5000) * 0.3,
                      "weak": y + rng.randn(5000) * 3})
    sel = F.MutualInfoSelector(k=2, max_samples=3000, random_state=0).fit(X, y)
    assert sel.selected_ == ["signal", "weak"]
    assert sel.scores_["signal"] > sel.scores_["weak"] > sel.scores_["noise"]
    assert list(sel.transform(X).columns) == ["signal", "weak"]
    assert sel.transform_record({"noise": 1.0, "signal": 2.0, "weak": 3.0}) == {
        "signal": 2.0, "weak": 3.0}
    again = F.MutualInfoSelector(k=2, max_samples=3000, random_state=0).fit(X, y)
    assert again.scores_ == sel.scores_


def test_category_codes_rank_by_frequency_and_match_the_record_path() -> None:
    """Codes: most frequent first, rare and unseen share the last code, missing is NaN; the
    per-record path gives the frame path's values (interactions included)."""
    import math

    from chicago_crime.features import CategoryCodes

    train = pd.DataFrame({"iucr": ["a", "a", "a", "b", "b", "c", None],
                          "beat": ["1", "2", "1", "1", "2", "2", "1"],
                          "hour": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan]})
    codes = CategoryCodes(max_categories=3, interactions=[("iucr", "beat")]).fit(train)
    assert codes.categorical_ == ["iucr", "beat", "iucr*beat"]
    assert codes.codes_["iucr"] == {"a": 0, "b": 1}
    # missing on either side of the pair, and repeated values (coded once per distinct value)
    probe = pd.DataFrame({"iucr": ["a", "b", "c", "zzz", None, "a", None, "b", "a"],
                          "beat": ["1", "2", "9", "1", "1", None, None, "2", "1"],
                          "hour": [7.0, np.nan, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 4.0]})
    out = codes.transform(probe)
    assert out["iucr"].tolist()[:4] == [0.0, 1.0, 2.0, 2.0] and math.isnan(out["iucr"][4])
    assert list(out.columns) == list(codes.get_feature_names_out())
    for i, record in enumerate(probe.to_dict("records")):
        row = codes.transform_record(record)
        for col in out.columns:
            a, b = row[col], out[col][i]
            assert (math.isnan(a) and math.isnan(b)) or a == b, (col, i)
    with pytest.raises(ValueError, match="max_categories"):
        CategoryCodes(max_categories=300).fit(train)
