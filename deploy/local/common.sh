# Shared by deploy/local/quickstart.sh and deploy/test.sh: installs what a
# fresh machine lacks. Sourced, not run.

TANSU_VERSION="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '==> %s\n' "$*"; }

# Tansu, a Kafka-compatible broker in Rust (see TESTING in the README).
# The first install compiles it: about 12 minutes on 2 cores, once per machine.
ensure_tansu() {
  if tansu --version 2>/dev/null | grep -q "tansu $TANSU_VERSION"; then
    return
  fi
  log "installing the Tansu broker $TANSU_VERSION with cargo (one time, ~12 min on 2 cores)"
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql
}

# aiosmtpd, the real SMTP server the integration tests deliver to.
ensure_aiosmtpd() {
  local py="${FOREWARN_TEST_PYTHON:-python3}"
  if "$py" -c 'import aiosmtpd' 2>/dev/null; then
    return
  fi
  log "installing aiosmtpd for $py"
  if "$py" -m pip install --quiet --disable-pip-version-check 'aiosmtpd==1.4.6'; then
    return
  fi
  # No pip for this interpreter: Debian's package, for the system python.
  log "pip failed; installing Debian's python3-aiosmtpd"
  apt-get update -qq && apt-get install -y -qq python3-aiosmtpd
  export FOREWARN_TEST_PYTHON=/usr/bin/python3
}

# The openssl command: the delivery tests make a throwaway TLS certificate
# with it for the STARTTLS cases.
ensure_openssl() {
  if command -v openssl >/dev/null 2>&1; then
    return
  fi
  log "installing openssl (the command) with apt-get"
  apt-get update -qq && apt-get install -y -qq openssl
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# promtool (Debian's prometheus package): the observability test checks
# /metrics with `promtool check metrics`.
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    return
  fi
  log "installing promtool (Debian's prometheus package) with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
}
