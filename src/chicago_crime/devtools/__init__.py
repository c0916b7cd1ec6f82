"""Developer tooling, not needed to run the pipeline or serve the model: the native stack
runner (``stack``), the Socrata replay server (``replay``), the demo journey (``demo``), the
Airflow REST client helper (``airflow_client``) and lake seeding from exports (``seed``)."""
