#!/bin/sh
# The queue manager as a service (`tether qm serve` with a configuration file) and the
# tether command line: send, recv, queues.
set -eu
DIR=$(mktemp -d) && cd "$DIR"              # a scratch directory
trap 'kill $QM 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat > qm.toml <<'TOML'
data_dir = "data"                         # the journal (created 0700)
listen = "tcp://127.0.0.1:0"              # port 0 for this example; the default is 7600
[queues.orders]                           # created at start (or checked against these)
time_to_live = 3600                       # seconds; the default is one day
receive_error_handling = "move"           # the default, "fault", stops the queue on poison
TOML
tether qm serve --config qm.toml > ready.txt 2> qm.log &   # the log goes to stderr
QM=$!
for _ in $(seq 100); do grep -q ready ready.txt && break; sleep 0.1; done
cat ready.txt                              # every address actually bound
ADDRESS=$(sed 's|.*tcp://||' ready.txt)    # 127.0.0.1:PORT

tether send "tether://$ADDRESS/orders" "order 1"           # prints the message's id
printf 'order 2' | tether send "tether://$ADDRESS/orders" -  # the body from stdin
tether queues "tether://$ADDRESS"                          # $dead and $journal are always there
tether recv "tether://$ADDRESS/orders" --count 2           # prints each body, completes it

kill -TERM $QM && wait $QM                 # SIGTERM: a clean shutdown
tail -n 1 qm.log

# Expected output:
#   tether qm: ready tcp://127.0.0.1:...
#   ...-1.0
#   ...-2.0
#   name      durable  depth  in flight  retrying  dead  poison  faulted
#   $dead        true      0          0         0     0       0    false
#   $journal     true      0          0         0     0       0    false
#   orders       true      2          0         0     0       0    false
#   order 1
#   order 2
#   ... INFO tether.queue.service: queue manager stopped cleanly
