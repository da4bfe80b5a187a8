# Sourced by the install scripts: `apt_install PKG...` installs Debian packages where root and apt-get are
# there; elsewhere (or when apt fails) it prints a note and returns 0, so a machine without them still
# sets up (the tests that need the packages then skip, or fail under CI=true).
apt_install() {
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null) \
      || echo "note: could not apt-get install $*"
  else
    echo "note: $* missing and not installable here (needs root and apt)"
  fi
}
