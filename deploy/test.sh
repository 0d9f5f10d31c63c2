#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (Tansu, aiosmtpd, openssl,
# promtool), then
# runs the linters and every test: unit, integration and end-to-end against
# a real Kafka-compatible broker and a real SMTP server on 127.0.0.1.
#
# Set FOREWARN_TEST_BROKERS=host:port to run the broker tests against your
# own Kafka cluster instead of a local Tansu.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/local/common.sh

# A lean test build: line tables (enough for a panic's backtrace) instead of
# full debug info, and no incremental cache. A clean build's target/ is then
# 2.8 GB after a whole run instead of 6.6 GB, and links faster; a CI machine with little disk
# left once failed here with "No space left on device". Set either variable
# yourself to override it.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

ensure_tansu
ensure_aiosmtpd
ensure_openssl
ensure_promtool

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
log "forewarn check (the shipped rules and the local config)"
cargo run --quiet -- check --config deploy/local/forewarn.toml rules
log "forewarn test (the shipped rules' tests in rules/tests/)"
cargo run --quiet -- test rules
log "deploy/ artefacts (hadolint, kubernetes-validate, compose schema, systemd-analyze, promtool)"
deploy/check.sh
log "cargo test (unit, integration, end-to-end)"
out="$(mktemp)"
status=0
cargo test 2>&1 | tee "$out" || status=$?
# One closing line with the totals over every test binary (cargo's own last
# line is the doc-test summary, which has none).
sum() { grep -E '^test result:' "$out" | grep -Eo "[0-9]+ $1" | awk '{s += $1} END {print s + 0}'; }
echo "tests: $(sum passed) passed, $(sum failed) failed"
rm -f "$out"
exit "$status"
