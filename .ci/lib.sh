# Helpers for .ci/setup.d scripts: sourced, never run.
# apt_install PKG...: installs Debian packages when running as root with apt-get,
# running `apt-get update` at most once per machine boot. Returns non-zero (and says
# why) where it cannot install; callers decide whether that is fatal.
apt_install() {
  if command -v "$1" >/dev/null 2>&1 && [ "${APT_FORCE:-0}" != 1 ]; then return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ci: cannot install $* (not root or no apt-get); tests that need it will skip" >&2
    return 1
  fi
  local marker=/tmp/.mlp-apt-updated
  if [ ! -e "$marker" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && touch "$marker"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
