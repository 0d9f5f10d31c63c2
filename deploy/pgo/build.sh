#!/usr/bin/env bash
# The profile-guided (PGO) release build of forewarn. Three steps:
#
#   1. build forewarn with instrumentation (-Cprofile-generate);
#   2. train it: replay the sample week (rules/samples/week.jsonl.gz, 50,638
#      events) through the shipped rules and, compared, through the training
#      rules in deploy/pgo/rules/, writing the would-be messages; then check
#      and test the shipped rules. Every run leaves a profile of which
#      branches ran how often;
#   3. build forewarn again with that profile (-Cprofile-use), so that the
#      compiler lays out, inlines and unrolls for the paths that run.
#
# Usage, from anywhere in the repository:
#
#   deploy/pgo/build.sh                  the daemon; prints where it is
#   deploy/pgo/build.sh --out PATH       ... and copies it to PATH
#   deploy/pgo/build.sh --bench [ARGS]   the engine benchmark built with the
#                                        same profile, then run: prints its
#                                        figures (ARGS go to cargo bench)
#
# It takes about twice as long as `cargo build --release` (two release
# builds, plus seconds of training), and needs LLVM's llvm-profdata, which
# it installs with `rustup component add llvm-tools` when it is missing.
# Everything lands in target/pgo/ (FOREWARN_PGO_DIR moves it); each run
# trains afresh, so the profile always matches the code it builds.
# RUSTFLAGS, if set, are kept and applied to all three steps.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

bench=0
out=""
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a path}; shift 2 ;;
    --bench) bench=1; shift; bench_args=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy/pgo/build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '==> pgo: %s\n' "$*"; }
dir=${FOREWARN_PGO_DIR:-$root/target/pgo}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros:
# they are neither instrumented (their runs would add to the profile) nor
# built with the profile.
host=$(rustc -vV | sed -n 's/^host: //p')
base_flags=${RUSTFLAGS:-}

# ---- llvm-profdata -------------------------------------------------------------
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  command -v rustup >/dev/null 2>&1 || {
    echo "deploy/pgo/build.sh: $profdata is missing and there is no rustup to install it (rustup component add llvm-tools)" >&2
    exit 1
  }
  log "installing llvm-tools (llvm-profdata) with rustup (one time)"
  rustup component add llvm-tools >/dev/null 2>&1 || rustup component add llvm-tools-preview
fi

# ---- 1. instrumented build ---------------------------------------------------
started=$SECONDS
log "1/3 building with instrumentation into $dir/instrumented"
RUSTFLAGS="$base_flags -Cprofile-generate=$dir/profraw" \
  cargo build --release --locked --bin forewarn --target "$host" --target-dir "$dir/instrumented"
trained="$dir/instrumented/$host/release/forewarn"

# ---- 2. training ---------------------------------------------------------------
log "2/3 training: the sample week through the shipped and the training rules"
rm -rf "$dir/profraw" "$dir/replay-out"
week=(--events rules/samples/week.jsonl.gz --config rules/samples/week.toml
  --rules rules --out "$dir/replay-out")
{
  # --until lets the training rules' later deadlines (two days) pass.
  "$trained" replay "${week[@]}" --compare deploy/pgo/rules --until 2026-11-26T00:00:00Z
  "$trained" replay "${week[@]}" --report "$dir/training-report.html"
  "$trained" check rules
  "$trained" test rules
} >"$dir/training.txt"
shopt -s nullglob
raw=("$dir"/profraw/*.profraw)
[ ${#raw[@]} -gt 0 ] || {
  echo "deploy/pgo/build.sh: the training left no profile in $dir/profraw" >&2
  exit 1
}
"$profdata" merge -o "$dir/forewarn.profdata" "${raw[@]}"
log "profile: $dir/forewarn.profdata (what the training printed: $dir/training.txt)"

# ---- 3. optimised build ----------------------------------------------------------
# rustc warns about any function whose code differs from what the profile
# saw. The daemon's should all match: both builds compile the same sources.
# The benchmark counts allocations with a global allocator of its own, so
# its four allocator shims (__rust_alloc and kin) differ from the daemon's
# and are built without a profile (four warnings).
use_flags="$base_flags -Cprofile-use=$dir/forewarn.profdata"
if [ "$bench" = 1 ]; then
  log "3/3 building and running the engine benchmark with the profile"
  RUSTFLAGS="$use_flags" cargo bench --locked --bench engine --target "$host" \
    --target-dir "$dir/optimized" "${bench_args[@]}"
  exit 0
fi
log "3/3 building the daemon with the profile into $dir/optimized"
RUSTFLAGS="$use_flags" \
  cargo build --release --locked --bin forewarn --target "$host" --target-dir "$dir/optimized"
binary="$dir/optimized/$host/release/forewarn"
if [ -n "$out" ]; then
  install -D -m 0755 "$binary" "$out"
  binary=$out
fi
log "built $binary in $((SECONDS - started)) s"
