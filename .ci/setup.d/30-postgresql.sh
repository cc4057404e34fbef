#!/usr/bin/env bash
# PostgreSQL for the tracking store tests (tests/test_tracking_store.py starts its own cluster
# with initdb/pg_ctl in a temporary folder on a free loopback port).
set -u
. "$(dirname "$0")/../lib.sh"
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
  exit 0
fi
apt_install postgresql || echo "ci: postgresql not installed; the PostgreSQL tracking tests will skip" >&2
exit 0
