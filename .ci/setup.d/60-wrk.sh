#!/usr/bin/env bash
# wrk: the load generator of benchmarks/payload_log.py (its smoke test skips without it)
source "$(dirname "$0")/../lib.sh"
apt_install wrk
