"""Stage manifests on a small real lake (moto S3): written last, required by every reader,
checked byte for byte, and a killed attempt cannot pass its outputs off as its successor's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chicago_crime import etl, layout, stages
from chicago_crime.devtools.seed import seed_window_from_exports
from chicago_crime.lake import Lake
from chicago_crime.manifest import (
    Publication,
    StageIntegrityError,
    StageNotPublished,
    SupersededAttempt,
    attempt_identity,
)
from chicago_crime.model import train

MONTH = "2018-06"


@pytest.fixture(scope="module")
def small(moto_endpoint: str, shared_data: Path) -> dict[str, Any]:
    """A ~3,000-record window through every stage, with a log of the lake's writes."""
    from chicago_crime.config import load_settings

    settings = load_settings(
        aws_access_key_id="testing", aws_secret_access_key="testing",
        aws_endpoint_url_s3=moto_endpoint, data_repo_bucket_name=f"mf-{os.urandom(4).hex()}")
    lake = Lake(settings=settings)
    lake.ensure_bucket()
    seed_window_from_exports(lake, shared_data, MONTH, months=2, max_rows=3000)
    writes: list[str] = []
    put = lake.put_bytes

    def logged(key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        writes.append(key)
        put(key, data, content_type)

    lake.put_bytes = logged  # type: ignore[method-assign]
    results = etl.run_all(MONTH, lake, settings)
    assert all(r["status"] == etl.OK for r in results.values()), results
    lake.put_bytes = put  # type: ignore[method-assign]
    return {"lake": lake, "settings": settings, "writes": writes, "results": results}


@pytest.fixture
def restore(small: dict[str, Any]) -> Any:
    """Rerun every stage after a test that breaks the lake."""
    yield small
    etl.run_all(MONTH, small["lake"], small["settings"])


def test_each_stage_writes_its_manifest_last(small: dict[str, Any]) -> None:
    lake, writes = small["lake"], small["writes"]
    for stage in stages.NAMES:
        prefix = layout.stage_prefix(MONTH, stage)
        own = [k for k in writes if (k.startswith(prefix) or (k == layout.enriched_key(MONTH)
                                     and stage == stages.ENRICH))
               and not k.endswith(layout.CLAIM_FILE)]
        assert own[-1] == layout.manifest_key(MONTH, stage), (stage, own)
        manifest = lake.read_json(layout.manifest_key(MONTH, stage))
        listed = {o["key"] for o in manifest["objects"].values()}
        assert listed == set(own[:-1]) | {layout.report_key(MONTH, stage)}
        assert manifest["written_by"]["run_id"].startswith("local-")
        assert {"host", "pid", "try_number"} <= set(manifest["written_by"])
        source = stages.source(stage)
        assert set(manifest["sources"]) == {source.name if source else "window"}
    # the claim of each attempt was taken first and released after publishing
    assert writes[0] == layout.stage_key(MONTH, stages.ENRICH, layout.CLAIM_FILE)
    assert not [k for k in lake.list_keys() if k.endswith(layout.CLAIM_FILE)]


def test_published_chain_ties_every_stage_to_its_source(small: dict[str, Any]) -> None:
    chain = etl.published_chain(small["lake"], MONTH)
    assert list(chain) == list(stages.NAMES)
    for stage, pub in chain.items():
        pub.verify()
        source = stages.source(stage)
        if source:
            assert pub.sources[source.name] == chain[source.name].digest


def test_a_stage_without_manifest_is_refused_by_every_reader(small, restore) -> None:
    lake, settings = small["lake"], small["settings"]
    lake.delete(layout.manifest_key(MONTH, stages.SPLIT))
    with pytest.raises(StageNotPublished, match="'split' is not published"):
        etl.run_stage("outliers", MONTH, lake, settings)  # the next stage
    with pytest.raises(StageNotPublished):
        etl.split_raw_window(MONTH, lake, settings)  # the notebooks' helper
    with pytest.raises(train.TrainingDataMissing, match="'split' is not published"):
        train.load_month(MONTH, lake, settings)  # training
    lake.delete(layout.manifest_key(MONTH, stages.ENRICH))
    with pytest.raises(StageNotPublished, match="'enrich' is not published"):
        etl.read_enriched(lake, MONTH)


def test_an_interrupted_attempt_leaves_the_stage_unpublished_until_rerun(small, restore) -> None:
    """An attempt killed after writing part of its outputs: readers refuse the stage (and say
    an attempt is unfinished); the retry publishes it again."""
    lake, settings = small["lake"], small["settings"]
    killed = Publication(lake, layout.stage_prefix(MONTH, "scale"), "scale", MONTH,
                         attempt_identity(run_id="killed", try_number=1))
    killed.claim()
    killed.put("train", layout.data_key(MONTH, "scale", "train"), b"half of a stage")
    # ... SIGKILL: its objects no longer match the manifest still published
    with pytest.raises(StageIntegrityError, match="rewriting the stage or was interrupted"):
        etl.run_stage("balance", MONTH, lake, settings)
    with pytest.raises(StageIntegrityError):
        train.load_month(MONTH, lake, settings)
    # the first attempt ever at a stage leaves no manifest at all
    lake.delete(layout.manifest_key(MONTH, "scale"))
    with pytest.raises(StageNotPublished, match="attempt that has not finished"):
        etl.run_stage("balance", MONTH, lake, settings)
    retry = etl.run_stage("scale", MONTH, lake, settings,
                          attempt=attempt_identity(run_id="killed", try_number=2))
    assert retry["status"] == etl.OK
    written_by = lake.read_json(layout.manifest_key(MONTH, "scale"))["written_by"]
    assert (written_by["run_id"], written_by["try_number"]) == ("killed", 2)
    assert not lake.exists(layout.stage_key(MONTH, "scale", layout.CLAIM_FILE))
    etl.published(lake, MONTH, "scale").verify()
    assert etl.published_chain(lake, MONTH)  # identical bytes: the chain holds


def test_a_superseded_attempt_can_neither_write_nor_publish(small, restore) -> None:
    """A killed worker's attempt still running when its retry claims the stage."""
    lake, settings = small["lake"], small["settings"]
    prefix, key = layout.stage_prefix(MONTH, "encode"), layout.data_key(MONTH, "encode", "train")
    zombie = Publication(lake, prefix, "encode", MONTH, attempt_identity(run_id="r", try_number=1))
    zombie.claim()
    zombie.put("train", key, b"stale bytes")  # writes while it still holds the claim
    successor = etl.run_stage("encode", MONTH, lake, settings,
                              attempt=attempt_identity(run_id="r", try_number=2))
    assert successor["status"] == etl.OK
    good = etl.published(lake, MONTH, "encode")
    good.verify()  # the successor rewrote the object: consistent again
    with pytest.raises(SupersededAttempt):
        zombie.put("train", key, b"stale bytes")
    with pytest.raises(SupersededAttempt):
        zombie.publish()
    assert etl.published(lake, MONTH, "encode").manifest == good.manifest
    # a write that was already in flight lands after the successor published: refused
    lake.put_bytes(key, b"stale bytes")
    with pytest.raises(StageIntegrityError, match=r"encode/train\.parquet"):
        etl.run_stage("scale", MONTH, lake, settings)
    with pytest.raises(StageIntegrityError, match="rerun the stage"):
        etl.published(lake, MONTH, "encode").verify()


def test_a_fitted_object_changed_in_the_lake_is_never_loaded(small, restore) -> None:
    """Write access to the lake is not enough to change what training loads."""
    lake, settings = small["lake"], small["settings"]
    key = layout.fitted_key(MONTH, "scale")
    lake.put_bytes(key, lake.get_bytes(layout.fitted_key(MONTH, "outliers")))
    with pytest.raises(StageIntegrityError, match=r"scale/scale\.skops"):
        train.load_month(MONTH, lake, settings)


def test_a_rerun_source_invalidates_the_stages_built_on_it(small, restore) -> None:
    """split rerun with another seed: the later stages were built from the old split."""
    lake, settings = small["lake"], small["settings"]
    other = settings.model_copy(update={"random_seed": settings.random_seed + 1})
    assert etl.run_stage("split", MONTH, lake, other)["status"] == etl.OK
    with pytest.raises(StageIntegrityError, match="'outliers' was built from another 'split'"):
        etl.published_chain(lake, MONTH)
    with pytest.raises(StageIntegrityError):
        train.load_month(MONTH, lake, settings)


def test_a_window_rewritten_after_enrich_is_refused(small, restore) -> None:
    lake, settings = small["lake"], small["settings"]
    key = layout.window_key(MONTH)
    original = lake.get_bytes(key)
    lake.put_bytes(key, original + original.splitlines(keepends=True)[-1])
    try:
        with pytest.raises(StageIntegrityError, match="changed since the enrich stage"):
            etl.split_raw_window(MONTH, lake, settings)
    finally:
        lake.put_bytes(key, original)
