#!/usr/bin/env bash
source "$(dirname "$0")/../lib.sh"
# Debian's binary is named like its package (prometheus-alertmanager), so apt_install's
# "already on PATH" check fits; an upstream install is called `alertmanager`: take that too.
if [ "${APT_FORCE:-0}" != 1 ] && command -v alertmanager >/dev/null 2>&1; then exit 0; fi
apt_install prometheus-alertmanager
