#!/bin/sh
# minio-init (docker-compose.yaml): the lake's buckets and its least-privilege users, with the mc
# client of the MinIO image. One-shot and idempotent: a rerun (every `make up`) changes nothing,
# or applies a key changed in .env.
#
#   MinIO root   S3_ADMIN_ACCESS_KEY_ID / S3_ADMIN_SECRET_ACCESS_KEY: this job and the console's
#                administrators only; no other service holds it (make check-compose).
#   platform     AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (Airflow, JupyterLab): policy
#                chicago-crime-platform = objects and lifecycle rules of DATA_REPO_BUCKET_NAME.
#   MLflow       MLFLOW_S3_ACCESS_KEY_ID / MLFLOW_S3_SECRET_ACCESS_KEY (the mlflow container's
#                artifact proxy): policy chicago-crime-mlflow = objects of MLFLOW_BUCKET_NAME.
# Nobody else reads the MLflow bucket: clients fetch artifacts through MLflow's proxy
# (--serve-artifacts). No user may create or delete buckets, change policies or use the admin API.
# The same grants as the native stack's SeaweedFS identities (chicago_crime.devtools.hardening).
set -eu

: "${AWS_ENDPOINT_URL_S3:?}" "${DATA_REPO_BUCKET_NAME:?}" "${MLFLOW_BUCKET_NAME:?}"
: "${S3_ADMIN_ACCESS_KEY_ID:?S3_ADMIN_ACCESS_KEY_ID is empty in .env - run make install}"
: "${S3_ADMIN_SECRET_ACCESS_KEY:?S3_ADMIN_SECRET_ACCESS_KEY is empty in .env - run make install}"
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?AWS_SECRET_ACCESS_KEY is empty in .env - run make install}"
: "${MLFLOW_S3_ACCESS_KEY_ID:?}" "${MLFLOW_S3_SECRET_ACCESS_KEY:?MLFLOW_S3_SECRET_ACCESS_KEY is empty in .env - run make install}"

work="/tmp/minio-init.$$"  # the image is minimal: sh, mkdir, rm, mc
mkdir -m 700 "${work}"
trap 'rm -rf "${work}"' EXIT
mc() { command mc --config-dir "${work}/mc" "$@"; }

# bucket_policy NAME BUCKET BUCKET_ACTIONS OBJECT_ACTIONS: a policy on one bucket and its objects.
bucket_policy() {
  printf '{"Version":"2012-10-17","Statement":[%s,%s]}\n' \
    "{\"Effect\":\"Allow\",\"Action\":[$3],\"Resource\":[\"arn:aws:s3:::$2\"]}" \
    "{\"Effect\":\"Allow\",\"Action\":[$4],\"Resource\":[\"arn:aws:s3:::$2/*\"]}" \
    >"${work}/$1.json"
  mc admin policy create lake "$1" "${work}/$1.json"
}
# user NAME SECRET POLICY: create (or re-key) the user, then attach its policy (kept if attached).
user() {
  mc admin user add lake "$1" "$2" >/dev/null
  echo "user $1: key set"
  mc admin policy attach lake "$3" --user "$1"
}

objects='"s3:GetObject","s3:PutObject","s3:DeleteObject","s3:AbortMultipartUpload","s3:ListMultipartUploadParts"'
listing='"s3:GetBucketLocation","s3:ListBucket","s3:ListBucketMultipartUploads"'

mc alias set lake "${AWS_ENDPOINT_URL_S3}" "${S3_ADMIN_ACCESS_KEY_ID}" "${S3_ADMIN_SECRET_ACCESS_KEY}" >/dev/null
mc mb --ignore-existing "lake/${DATA_REPO_BUCKET_NAME}" "lake/${MLFLOW_BUCKET_NAME}"
# The ETL's setup_s3 task sets the expiry rule of its temporary prefix.
bucket_policy chicago-crime-platform "${DATA_REPO_BUCKET_NAME}" \
  "${listing},\"s3:GetLifecycleConfiguration\",\"s3:PutLifecycleConfiguration\"" "${objects}"
bucket_policy chicago-crime-mlflow "${MLFLOW_BUCKET_NAME}" "${listing}" "${objects}"
user "${AWS_ACCESS_KEY_ID}" "${AWS_SECRET_ACCESS_KEY}" chicago-crime-platform
user "${MLFLOW_S3_ACCESS_KEY_ID}" "${MLFLOW_S3_SECRET_ACCESS_KEY}" chicago-crime-mlflow
echo "minio-init: buckets ${DATA_REPO_BUCKET_NAME}, ${MLFLOW_BUCKET_NAME}; users ${AWS_ACCESS_KEY_ID}, ${MLFLOW_S3_ACCESS_KEY_ID}"
