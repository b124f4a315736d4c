#!/bin/sh
# One-shot setup of the compose stack's MinIO (service s3-init, image minio/mc): bucket `refit`,
# a policy allowing only that bucket, and the user `refit` (secret key from the s3-secret-key
# secret) with it. Idempotent: run at every `docker compose up`.
set -eu
root_password="$(cat /run/secrets/s3-root-password)"
refit_secret="$(cat /run/secrets/s3-secret-key)"
# Credentials through the environment, not argv (MC_HOST_<alias>); hex secrets need no escaping.
export MC_HOST_local="http://refit-admin:${root_password}@minio:9000"

mc mb --ignore-existing local/refit
cat > /tmp/refit-rw.json <<'JSON'
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::refit"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::refit/*"]}
  ]
}
JSON
mc admin policy create local refit-rw /tmp/refit-rw.json
mc admin user add local refit "$refit_secret"
# Attaching a policy twice is an error: accept it when the user already has it.
mc admin policy attach local refit-rw --user refit 2>/dev/null ||
  mc admin user info local refit | grep -q refit-rw
echo "s3-init: bucket refit and user refit ready"
