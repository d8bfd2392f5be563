#!/usr/bin/env bash
# Build both images from the one Dockerfile and check that they work. Not part of .ci/run.
#
#   scripts/image-test.sh
#
# - installs Debian's docker.io (and debootstrap) when missing, and starts dockerd when none runs;
# - when python:3.11-slim-bookworm cannot be found locally (no registry here), builds a stand-in base
#   with debootstrap: python3, python3-venv, python-is-python3, ca-certificates and the host's CA bundle;
# - builds the runtime image and the demo image (--build-arg EXTRAS=demo);
# - checks: the demo container becomes healthy and raises the alert; the runtime container runs as
#   non-root, has the native tokenizer, `streamer check-config` and `streamer replay` (text and
#   Parquet) work in it, and it has no demo parts;
# - prints both image sizes and the runtime venv's size.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=python:3.11-slim-bookworm
RUNTIME=streamer:image-test
DEMO=streamer:image-test-demo
WORK=$(mktemp -d /tmp/streamer-image-test.XXXXXX)
PORT=${STREAMER_IMAGE_TEST_PORT:-19108}
STARTED_DOCKERD=""
CONTAINERS=()

say() { printf '== %s\n' "$*"; }
fail() { printf 'image-test: FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    if [[ -n "$STARTED_DOCKERD" ]]; then
        kill "$STARTED_DOCKERD" 2>/dev/null || true
        wait "$STARTED_DOCKERD" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    say "starting dockerd"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; fail "dockerd did not start"; }
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    say "$BASE not available: building a stand-in base with debootstrap"
    ROOTFS="$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$ROOTFS" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    # pip inside the build must trust what the host trusts (a registry proxy's CA, if any).
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt' \
        --change 'CMD ["python3"]' - "$BASE" >/dev/null
fi

say "building $RUNTIME"
docker build --network host -q -t "$RUNTIME" . >"$WORK/build-runtime.log" 2>&1 || { tail -40 "$WORK/build-runtime.log"; fail "runtime build"; }
say "building $DEMO (EXTRAS=demo)"
docker build --network host -q --build-arg EXTRAS=demo -t "$DEMO" . >"$WORK/build-demo.log" 2>&1 \
    || { tail -40 "$WORK/build-demo.log"; fail "demo build"; }

say "runtime image: runs as non-root"
uid=$(docker run --rm --entrypoint id "$RUNTIME" -u)
[[ "$uid" != 0 ]] || fail "runtime container runs as root"
echo "uid $uid"

say "runtime image: the native tokenizer was built"
docker run --rm --entrypoint python "$RUNTIME" -c "from streamer.decode import _scan; print(_scan.__file__)" \
    || fail "the native tokenizer is missing from the runtime image"

say "runtime image: streamer check-config"
out=$(docker run --rm "$RUNTIME" check-config --config /etc/streamer/streamer.yaml)
echo "$out"
[[ "$out" == *": ok; sources: "* ]] || fail "check-config: $out"

say "runtime image: streamer replay (stdin)"
line='2 123456789010 eni-0a1b2c3d4e5f60718 10.0.0.5 203.0.113.9 443 51000 6 10 8400 1700000000 1700000060 REJECT OK'
out=$(printf '%s\n' "$line" | docker run -i --rm "$RUNTIME" replay --output json -)
echo "$out" | head -c 300; echo
[[ "$out" == *'"eni-0a1b2c3d4e5f60718"'* ]] || fail "replay output lacks the interface"

say "runtime image: streamer replay (Parquet: the slimmed pyarrow still reads it)"
out=$(docker run --rm --entrypoint sh "$RUNTIME" -c "python -c \"
import pyarrow as pa, pyarrow.parquet as pq
pq.write_table(pa.table({'version': [2], 'account_id': ['123456789010'], 'interface_id': ['eni-0a1b2c3d4e5f60718'],
    'srcaddr': ['10.0.0.5'], 'dstaddr': ['203.0.113.9'], 'srcport': [443], 'dstport': [51000], 'protocol': [6],
    'packets': [10], 'bytes': [8400], 'start': [1700000000], 'end': [1700000060], 'action': ['REJECT'],
    'log_status': ['OK']}), '/tmp/one.parquet')
\" && streamer replay --output json /tmp/one.parquet")
echo "$out" | head -c 200; echo
[[ "$out" == *'"eni-0a1b2c3d4e5f60718":{"REJECT":{"records":1'* ]] || fail "Parquet replay in the runtime image"

say "runtime image: no demo parts"
if docker run --rm --entrypoint python "$RUNTIME" -c "import moto" >/dev/null 2>&1; then fail "moto is in the runtime image"; fi
out=$(docker run --rm "$RUNTIME" demo --duration 1 2>&1 || true)
echo "$out"
[[ "$out" == *"pip install 'vpcflow-streamer[demo]'"* ]] || fail "demo without the extra should say what to install"

say "demo image: becomes healthy and raises the alert"
name="streamer-image-test-demo-$$"
CONTAINERS+=("$name")
docker run -d --name "$name" --network host -e STREAMER_HEALTH_PORT="$PORT" \
    --health-interval 2s --health-start-period 5s \
    "$DEMO" demo --listen "127.0.0.1:$PORT" --spike-after 20 >/dev/null
healthy=""
for _ in $(seq 90); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || echo gone)
    if [[ "$status" == healthy ]]; then healthy=1; break; fi
    [[ "$status" == gone || "$(docker inspect --format '{{.State.Running}}' "$name")" == false ]] && break
    sleep 1
done
[[ -n "$healthy" ]] || { docker logs "$name" 2>&1 | tail -30; fail "demo container did not become healthy"; }
echo "healthy"
alert=""
for _ in $(seq 180); do
    if docker logs "$name" 2>&1 | grep -q '^ALERT'; then alert=1; break; fi
    sleep 1
done
[[ -n "$alert" ]] || { docker logs "$name" 2>&1 | tail -30; fail "demo raised no alert within 180 s"; }
docker logs "$name" 2>&1 | grep '^ALERT' | head -3
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^streamer_anomaly_score\{' | sort -t' ' -k2 -g | tail -1 || true
docker stop -t 20 "$name" >/dev/null

say "sizes"
for image in "$RUNTIME" "$DEMO"; do
    bytes=$(docker image inspect --format '{{.Size}}' "$image")
    venv=$(docker run --rm --entrypoint du "$image" -sm /opt/streamer | cut -f1)
    printf '%-28s image %5d MB   venv /opt/streamer %4d MB\n' "$image" $((bytes / 1000000)) "$venv"
done
say "image-test passed"
