"""Behavioural tests of the champion the journey trained, through the served API.

Made-With-ML style: what any good arrest model must do, whatever its metrics.

* invariance: moving a record one hour later within the same part of the day (nothing else
  changes) barely moves its probability;
* direction: a street narcotics possession scores above a department-store theft with the same
  time and place (possession is found by the arrest; a shop theft is reported afterwards).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
import requests

from chicago_crime.portal import crimes_export_path, read_export, to_soda_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

PLACE = {"beat": "1834", "district": "018", "ward": "42", "community_area": "8",
         "x_coordinate": "1176343", "y_coordinate": "1905318",
         "latitude": "41.892266", "longitude": "-87.626193"}


def _probabilities(settings: Any, records: list[dict[str, Any]]) -> np.ndarray:
    response = requests.post(f"{settings.api_url}/predict/batch", json={"records": records},
                             timeout=120)
    assert response.status_code == 200, response.text[:500]
    return np.array([p["arrest_probability"] for p in response.json()["predictions"]])


def test_one_hour_later_barely_moves_the_probability(journey, shared_data, stack_settings):
    import json

    raw = read_export(crimes_export_path(shared_data, journey.month))
    hours = raw["date"].str.slice(11, 13)
    afternoon = raw[hours.isin(["12", "13", "14", "15", "16"])].sample(300, random_state=3)
    records = json.loads(to_soda_json(afternoon))
    later = []
    for record in records:
        moment = datetime.fromisoformat(record["date"]) + timedelta(hours=1)  # still afternoon
        later.append({**record, "date": moment.strftime("%Y-%m-%dT%H:%M:%S.000")})
    before, after = _probabilities(stack_settings, records), _probabilities(stack_settings, later)
    shift = np.abs(after - before)
    assert np.median(shift) < 0.01, np.median(shift)
    assert shift.mean() < 0.02 and shift.max() < 0.15, (shift.mean(), shift.max())


def test_street_narcotics_scores_above_department_store_theft(journey, stack_settings):
    when = [f"{journey.month}-{day:02d}T{hour:02d}:30:00.000"
            for day in (4, 9, 14, 19, 24) for hour in (2, 10, 15, 21)]
    narcotics = [{"date": d, "primary_type": "NARCOTICS", "iucr": "1811",
                  "description": "POSS: CANNABIS 30GMS OR LESS", "location_description": "STREET",
                  "fbi_code": "18", "domestic": False, **PLACE} for d in when]
    theft = [{"date": d, "primary_type": "THEFT", "iucr": "0820",
              "description": "$500 AND UNDER", "location_description": "DEPARTMENT STORE",
              "fbi_code": "06", "domestic": False, **PLACE} for d in when]
    p_narcotics = _probabilities(stack_settings, narcotics)
    p_theft = _probabilities(stack_settings, theft)
    assert (p_narcotics > p_theft).all(), list(zip(p_narcotics, p_theft, strict=True))
    assert p_narcotics.mean() > p_theft.mean() + 0.3
