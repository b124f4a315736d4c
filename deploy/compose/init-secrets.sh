#!/usr/bin/env bash
# Generates the secrets deploy/compose.yaml mounts (compose `secrets:`, at /run/secrets/<name>)
# into deploy/compose/secrets/ (git-ignored by the .gitignore there). Idempotent: a file that
# exists is kept, so a second run changes nothing; delete a file and run it again to rotate it
# (then `docker compose up -d --force-recreate`).
#
#   deploy/compose/init-secrets.sh        # then: docker compose -f deploy/compose.yaml up -d
#
# Files (48 random hex characters unless said otherwise):
#   refit-token                  the coordinator's API token (REFIT_TOKEN for the CLI)
#   amqp-coordinator-password    RabbitMQ password of user refit-coordinator (tag management)
#   amqp-worker-password         RabbitMQ password of user refit-worker (least privilege)
#   rabbitmq-admin-password      RabbitMQ password of user refit-admin (administrator: the
#                                management UI on http://127.0.0.1:15672)
#   rabbitmq-definitions.json    those three users with salted SHA-256 hashes of the passwords,
#                                their permissions (those of `deploy/rabbitmq.sh users`, see
#                                deploy/README.md "Broker users") and vhost /; RabbitMQ imports it
#                                at every boot. Rewritten when a password file is newer.
#   s3-root-password             MinIO's root password (user refit-admin: console on :9001)
#   s3-secret-key                the secret key of MinIO user `refit` (refit's S3 credentials)
#
# The folder is mode 700; the files in it are mode 644 because compose bind-mounts them as they
# are and the refit images run as uid 10001, not as the files' owner. Needs python3.
# Environment: REFIT_COMPOSE_PREFIX, the queue prefix of deploy/compose/*.toml (default refit).
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"
say() { echo "init-secrets: $*" >&2; }
command -v python3 >/dev/null || { say "error: python3 is missing"; exit 1; }

mkdir -p "$dir"
chmod 700 "$dir"

REFIT_SECRETS_DIR="$dir" REFIT_PREFIX="${REFIT_COMPOSE_PREFIX:-refit}" python3 - <<'PY'
import base64, hashlib, json, os, re, secrets, sys

d = os.environ["REFIT_SECRETS_DIR"]
prefix = os.environ["REFIT_PREFIX"]
if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", prefix):
    sys.exit(f"init-secrets: error: invalid prefix {prefix!r}")

def path(name):
    return os.path.join(d, name)

for name in ["refit-token", "amqp-coordinator-password", "amqp-worker-password",
             "rabbitmq-admin-password", "s3-root-password", "s3-secret-key"]:
    if not os.path.exists(path(name)) or os.path.getsize(path(name)) == 0:
        with open(path(name), "w") as f:
            f.write(secrets.token_hex(24) + "\n")
        print(f"init-secrets: generated {name}", file=sys.stderr)
    os.chmod(path(name), 0o644)

def rabbit_hash(name):
    # rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password)), 4-byte salt.
    password = open(path(name)).read().strip().encode()
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password).digest()).decode()

defs = path("rabbitmq-definitions.json")
sources = ["rabbitmq-admin-password", "amqp-coordinator-password", "amqp-worker-password"]
if not os.path.exists(defs) or any(os.path.getmtime(path(s)) > os.path.getmtime(defs) for s in sources):
    p = re.escape(prefix)
    def user(name, secret, tags):
        return {"name": name, "password_hash": rabbit_hash(secret),
                "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags}
    definitions = {
        "vhosts": [{"name": "/"}],
        "users": [
            user("refit-admin", "rabbitmq-admin-password", ["administrator"]),
            user("refit-coordinator", "amqp-coordinator-password", ["management"]),
            user("refit-worker", "amqp-worker-password", []),
        ],
        "permissions": [
            {"user": "refit-admin", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "refit-coordinator", "vhost": "/", "configure": f"^{p}\\.",
             "write": f"^({p}\\..*|amq\\.default)$", "read": f"^{p}\\."},
            {"user": "refit-worker", "vhost": "/", "configure": "^amq\\.gen-.*$",
             "write": f"^{p}\\.events$",
             "read": f"^({p}\\.jobs\\.(?!dead(\\.|$))[^.]+(\\.high)?|amq\\.gen-.*)$"},
        ],
        "topic_permissions": [
            {"user": "refit-worker", "vhost": "/", "exchange": f"{prefix}.events",
             "write": "^(job|worker)\\.", "read": "^$"},
        ],
    }
    with open(defs, "w") as f:
        json.dump(definitions, f, indent=2)
        f.write("\n")
    print("init-secrets: wrote rabbitmq-definitions.json", file=sys.stderr)
os.chmod(defs, 0o644)
PY
say "secrets are in $dir"
