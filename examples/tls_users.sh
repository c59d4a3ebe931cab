#!/bin/sh
# A queue manager service over TLS with users and permissions: a certificate (here a
# self-signed one, made with openssl), password hashes from `tether qm passwd`, and
# clients that authenticate with --user (the password in $TETHER_PASSWORD).
set -eu
DIR=$(mktemp -d) && cd "$DIR"
trap 'kill $QM 2>/dev/null || true; rm -rf "$DIR"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout server.key -out server.pem 2> /dev/null
ALICE=$(printf 'alice-secret' | tether qm passwd)          # the password on stdin
cat > qm.toml <<TOML
data_dir = "data"
listen = "tls://127.0.0.1:0"              # with users, any address may be served
[tls]
cert = "server.pem"
key = "server.key"
[users.alice]
password_hash = "$ALICE"
send = ["orders"]                         # fnmatch patterns of queue names
receive = ["orders"]                      # (admin = true: create, delete, purge, \$ queues)
[queues.orders]
TOML
tether qm serve --config qm.toml > ready.txt 2> qm.log &
QM=$!
for _ in $(seq 100); do grep -q ready ready.txt && break; sleep 0.1; done
ADDRESS=$(sed 's|.*tls://||' ready.txt)

export TETHER_PASSWORD=alice-secret
tether send "tls://$ADDRESS/orders" "signed order" --user alice --cafile server.pem > /dev/null
tether recv "tls://$ADDRESS/orders" --user alice --cafile server.pem
tether recv "tls://$ADDRESS/\$dead" --user alice --cafile server.pem 2>&1 || true
TETHER_PASSWORD=wrong tether recv "tls://$ADDRESS/orders" --user alice --cafile server.pem 2>&1 || true
tether recv "tls://$ADDRESS/orders" --cafile server.pem 2>&1 || true      # no user
tether recv "tls://$ADDRESS/orders" --user alice 2>&1 || true   # not signed by a CA it trusts

# Expected output:
#   signed order
#   tether: error: user 'alice' may not receive from '$dead' (system queues need admin)
#   tether: error: authentication failed for user 'alice': unknown user or wrong password
#   tether: error: this queue manager requires a user and password
#   tether: error: TLS handshake with tls://127.0.0.1:... failed: certificate verify failed: self-signed certificate
