#!/bin/sh
# Queue administration and metrics from the shell: tether queue create|purge|delete,
# tether peek, and the Prometheus metrics of `tether qm serve --metrics`.
set -eu
DIR=$(mktemp -d) && cd "$DIR"              # a scratch directory
trap 'kill $QM 2>/dev/null || true; rm -rf "$DIR"' EXIT
# port 0 for this example (scripts read the ports from its first lines)
tether qm serve --data-dir data --listen tcp://127.0.0.1:0 --metrics 127.0.0.1:0 > ready.txt 2> qm.log &
QM=$!
for _ in $(seq 100); do grep -q ready ready.txt && break; sleep 0.1; done
cat ready.txt
ADDRESS=$(sed -n 's|.*ready tcp://||p' ready.txt)         # 127.0.0.1:PORT
METRICS=$(sed -n 's|.*metrics ||p' ready.txt)             # http://127.0.0.1:PORT/metrics

tether queue create "tether://$ADDRESS/orders" --set time_to_live=3600 --set max_length=none
tether send "tether://$ADDRESS/orders" "order 1" > /dev/null
tether send "tether://$ADDRESS/orders" "order 2" > /dev/null
tether peek "tether://$ADDRESS/orders" --count 5            # no lock, no delivery counted
tether recv "tether://$ADDRESS/orders"                      # receives and completes one
curl -s "$METRICS" | grep 'queue="orders"' | grep -E '_(messages|total)\{'
tether queue purge "tether://$ADDRESS/orders"
tether queue delete "tether://$ADDRESS/orders"
tether recv "tether://$ADDRESS/orders" 2>&1 || echo "exit status $?"

kill -TERM $QM && wait $QM                 # SIGTERM: a clean shutdown

# Expected output:
#   tether qm: metrics http://127.0.0.1:.../metrics
#   tether qm: ready tcp://127.0.0.1:...
#   queue orders created (or already there with these settings):
#   setting                 value
#   durable                 true
#   exactly_once            true
#   time_to_live            3600.0
#   dead_letter_queue       system
#   receive_retry_count     5
#   max_retry_cycles        2
#   retry_cycle_delay       1800.0
#   receive_error_handling  fault
#   max_message_size        65536
#   validity_duration       300.0
#   max_length              none
#   order 1
#   order 2
#   order 1
#   tether_queue_messages{queue="orders"} 1.0
#   tether_queue_sent_total{queue="orders"} 2.0
#   tether_queue_received_total{queue="orders"} 1.0
#   purged 1 messages from orders
#   queue orders deleted
#   tether: error: no queue named 'orders'
#   exit status 1
