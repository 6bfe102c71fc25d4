#!/usr/bin/env bash
# Point DVC at an object store instead of the default local remote.
#   infra/dvc-remote-object-store.sh s3://my-bucket/refine [https://endpoint.example:9000]
# Works for s3:// (AWS or any S3-compatible store such as MinIO), gs:// and azure://; install
# the matching plugin first (pip install dvc-s3 | dvc-gs | dvc-azure). Credentials come from
# the usual environment (AWS_ACCESS_KEY_ID/..., GOOGLE_APPLICATION_CREDENTIALS, ...) and are
# written only to .dvc/config.local, never to the committed .dvc/config.
set -euo pipefail
url=${1:?usage: $0 URL [ENDPOINT_URL]}
endpoint=${2:-}
case "$url" in
  s3://*|gs://*|azure://*) ;;
  *) echo "$0: URL must start with s3://, gs:// or azure:// (got '$url')" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
dvc remote add --force --default objectstore "$url"
if [ -n "$endpoint" ]; then
  dvc remote modify --local objectstore endpointurl "$endpoint"
fi
echo "DVC default remote is now 'objectstore' -> $url; 'dvc push' uploads data/ outputs."
