#!/usr/bin/env bash
# forewarn's main job, locally, in one command:
#   1. starts a Kafka-compatible broker (Tansu, installed on first run),
#   2. runs the daemon with the shipped rules (rules/),
#   3. feeds it the sample events (deploy/local/sample-events.jsonl),
#   4. shows the messages it sent (the "email" channel writes .eml files),
#   5. drains the daemon with SIGTERM and stops the broker.
# Everything it writes stays under target/quickstart/. To see the same
# decisions without a broker: forewarn replay --events deploy/local/sample-events.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/common.sh

ensure_tansu
log "building forewarn"
cargo build --quiet

WORK="target/quickstart"
rm -rf "$WORK" && mkdir -p "$WORK"
BROKER_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
BROKERS="127.0.0.1:$BROKER_PORT"
FOREWARN="target/debug/forewarn"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

log "starting Tansu on $BROKERS (in memory)"
tansu broker --listener-url "tcp://$BROKERS" --advertised-listener-url "tcp://$BROKERS" \
  --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
pids+=($!)
for topic in behavior-events forewarn-dead-letter; do
  for _ in $(seq 1 100); do
    if tansu topic create "$topic" --partitions 3 --broker "tcp://$BROKERS" >>"$WORK/tansu.log" 2>&1; then
      break
    fi
    sleep 0.2
  done
done

log "starting forewarn (rules: rules/, admin: http://127.0.0.1:$ADMIN_PORT)"
FOREWARN__KAFKA__BROKERS="$BROKERS" \
FOREWARN__ADMIN__LISTEN="127.0.0.1:$ADMIN_PORT" \
FOREWARN__STATE__DIR="$WORK/data" \
FOREWARN__CHANNELS__EMAIL__DIR="$WORK/outbox" \
FOREWARN__EVENTS__IDLE_TIMEOUT="2s" \
  "$FOREWARN" run --config deploy/local/forewarn.toml 2>"$WORK/forewarn.log" &
FOREWARN_PID=$!
pids+=("$FOREWARN_PID")
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$FOREWARN_PID" 2>/dev/null || { cat "$WORK/forewarn.log"; exit 1; }
  sleep 0.2
done

# The sample tells seven stories (see the file); their times are moved so
# that the last event happens now, and the absence deadlines (a checkout
# 40 minutes ago, a parcel promised hours ago) are already due.
log "producing $(wc -l <deploy/local/sample-events.jsonl) sample events to behavior-events"
"$FOREWARN" produce --brokers "$BROKERS" --topic behavior-events --rebase-time \
  --time-field ts --time-field shipment.promised_delivery_at --time-field new_eta \
  deploy/local/sample-events.jsonl

EXPECTED=7
for _ in $(seq 1 150); do
  n=$(find "$WORK/outbox" -name '*.eml' 2>/dev/null | wc -l)
  [ "$n" -ge "$EXPECTED" ] && break
  sleep 0.2
done
sleep 1 # let the non-matching, duplicate and invalid events be counted too

log "messages forewarn sent (files in $WORK/outbox/)"
python3 - "$WORK/outbox" <<'PY'
import email, email.policy, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.eml")):
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    text = msg.get_body(preferencelist=("plain",)).get_content()
    print("-" * 72)
    print(f"To:       {msg['To']}\nSubject:  {msg['Subject']}\nMessage:  {msg['Message-ID']}  ({'text + HTML' if msg.is_multipart() else 'text'})\n")
    print(text.rstrip())
print("-" * 72)
PY

log "what the daemon counted (http://127.0.0.1:$ADMIN_PORT/metrics)"
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" \
  | grep -E '^forewarn_(events_total|invalid_events_total|dead_letter_events_total|notifications_total|open_episodes)' || true

log "stopping forewarn with SIGTERM (drain, commit, exit 0)"
kill -TERM "$FOREWARN_PID"
status=0; wait "$FOREWARN_PID" || status=$?
echo "forewarn exited with status $status; its log is $WORK/forewarn.log"
[ "$status" -eq 0 ]

log "why did customer c-100 hear from us? forewarn explain (the decision log)"
FOREWARN__STATE__DIR="$WORK/data" \
FOREWARN__CHANNELS__EMAIL__DIR="$WORK/outbox" \
  "$FOREWARN" explain --customer c-100 --config deploy/local/forewarn.toml
