import pytest

from chicago_crime import layout


def test_month_range_crosses_years():
    assert layout.month_range("2018-06", 12) == [
        "2017-07", "2017-08", "2017-09", "2017-10", "2017-11", "2017-12",
        "2018-01", "2018-02", "2018-03", "2018-04", "2018-05", "2018-06"]
    assert layout.month_range("2018-01", 1) == ["2018-01"]


def test_keys_follow_the_documented_layout():
    assert layout.raw_crimes_key("2018-06") == "0-raw-data/monthly-data/2018-06/crimes.csv"
    assert layout.window_key("2018-02") == "0-raw-data/data/crimes_12m_2018-02-28.csv"
    assert layout.enriched_key("2016-02") == "1-enriched-data/crimes_enriched_2016-02-29.csv"
    assert layout.data_key("2018-06", "scale", "train") == (
        "2-processed-data/2018-06-30/scale/train.parquet")
    assert layout.fitted_key("2018-06", "encode") == (
        "2-processed-data/2018-06-30/encode/encode.skops")
    assert layout.report_key("2018-06", "enrich") == (
        "1-enriched-data/crimes_enriched_2018-06-30_report.json")
    assert layout.fitted_key("2018-06", "enrich") == (
        "1-enriched-data/crimes_enriched_2018-06-30_enrich.skops")
    with pytest.raises(ValueError):
        layout.stage_key("2018-06", "nope", "x")


def test_month_bounds_december():
    start, end = layout.month_bounds("2017-12")
    assert (start.year, start.month, end.year, end.month) == (2017, 12, 2018, 1)
