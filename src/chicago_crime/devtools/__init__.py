"""Developer tooling, not needed to run the pipeline or serve the model: the native stack
runner (``stack``), the Socrata replay server (``replay``), the demo journey (``demo``), sign-in
and waiting helpers over ``apache-airflow-client`` (``airflow_api``) and lake seeding from
exports (``seed``)."""
