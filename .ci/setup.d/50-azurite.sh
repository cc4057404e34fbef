#!/usr/bin/env bash
# Azurite (npm), the Azure Blob Storage emulator the artifact-store tests start on loopback.
set -u
if command -v azurite-blob >/dev/null 2>&1; then exit 0; fi
if ! command -v npm >/dev/null 2>&1; then
  source "$(dirname "$0")/../lib.sh"
  apt_install npm || exit 1
fi
npm install --global --silent --no-audit --no-fund azurite@3.37.0
