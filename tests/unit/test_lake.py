import pandas as pd
from sklearn.preprocessing import StandardScaler


def test_roundtrip_typed_objects(unit_lake):
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", None]})
    unit_lake.write_csv("t/x.csv", df)
    unit_lake.write_parquet("t/x.parquet", df)
    unit_lake.write_json("t/x.json", {"n": 3})
    pd.testing.assert_frame_equal(unit_lake.read_parquet("t/x.parquet"), df)
    assert unit_lake.read_csv("t/x.csv")["a"].tolist() == [1, 2, 3]
    assert unit_lake.read_json("t/x.json") == {"n": 3}
    scaler = StandardScaler().fit([[1.0], [3.0]])
    unit_lake.write_object("t/scaler.joblib", scaler)
    assert unit_lake.read_object("t/scaler.joblib").mean_.tolist() == [2.0]
    assert unit_lake.list_keys("t/") == [
        "t/scaler.joblib", "t/x.csv", "t/x.json", "t/x.parquet"]
    assert unit_lake.exists("t/x.csv") and not unit_lake.exists("t/nope")


def test_ensure_bucket_is_idempotent(unit_lake):
    assert unit_lake.ensure_bucket() is False


def test_expiry_rule_only_under_prefix(unit_lake):
    unit_lake.set_expiry("tmp/", 60)
    rules = unit_lake.lifecycle_rules()
    assert len(rules) == 1
    assert rules[0]["Filter"]["Prefix"] == "tmp/"
    assert rules[0]["Expiration"]["Days"] == 60


def test_delete_prefix_leaves_other_keys(unit_lake):
    for k in ("a/1", "a/2", "b/1"):
        unit_lake.put_bytes(k, b"x")
    assert unit_lake.delete_prefix("a/") == 2
    assert unit_lake.list_keys() == ["b/1"]
