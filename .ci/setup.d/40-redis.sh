#!/usr/bin/env bash
# redis-server for the feature store's Redis online-store tests (tests start it on a free port).
set -u
. "$(dirname "$0")/../lib.sh"
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || apt_install redis-server
