#!/usr/bin/env bash
# Build the images and smoke-test them for real (minutes; not part of CI):
#   cuda    build the default image (CUDA torch from PyPI), then run it as below
#   cpu     build the CPU-only image (--build-arg TORCH=cpu), then run it as below
#   compose docker compose -f docker-compose.yml -f docker-compose.cpu.yml up --build --wait
# Each run: start the container (read-only root file system, tmpfs /tmp, as in Kubernetes),
# time it to ready (GET /health/ready = 200) and to the HEALTHCHECK's "healthy", POST real
# MNIST and Fashion-MNIST test PNGs to /predict and compare the answers with the same models
# run here (deploy/smoke_client.py), send SIGTERM, check that readiness turns 503 while it
# drains and that the process exits 0. Prints image sizes and timings; exit 0 = all passed.
#
# Usage: deploy/smoke.sh [cuda] [cpu] [compose]        (default: all three)
# Env:   PORT (18000; the containers use the host's network: a free loopback port),
#        TORCH_CPU_INDEX_URL, TORCH_VERSION, TORCHVISION_VERSION (build args of the CPU image,
#        passed on when set), MNIST_SERVE_IMAGE_TAG (compose: run this already-built
#        mnist-serve:TAG with the CPU variant's settings instead of building :cpu), PY (.venv/bin/python: runs the client),
#        DOCKER_TOOLS (../shared/docker: on the project's machines, start the engine and
#        build and run through its loopback-only scripts; without it, plain docker is used).
# Everything runs on the host network and talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18000}
PY=${PY:-.venv/bin/python}
DOCKER_TOOLS=${DOCKER_TOOLS:-../shared/docker}
URL=http://127.0.0.1:$PORT
STEPS=("$@"); [ ${#STEPS[@]} -gt 0 ] || STEPS=(cuda cpu compose)
DRAIN_DELAY=2  # long enough to see readiness turn 503 after SIGTERM

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }
log() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
RESULTS=()
CID=""           # the container under test: removed if the script stops early
COMPOSE_DOWN=()  # the compose stack under test: taken down if the script stops early
cleanup() {
  [ -z "$CID" ] || docker rm -f "$CID" >/dev/null 2>&1 || true
  [ ${#COMPOSE_DOWN[@]} -eq 0 ] || "${COMPOSE_DOWN[@]}" down >/dev/null 2>&1 || true
}
trap cleanup EXIT
result() { RESULTS+=("$*"); echo "-> $*"; }

if [ -d "$DOCKER_TOOLS" ]; then
  "$DOCKER_TOOLS/dockerd-start.sh"
  "$DOCKER_TOOLS/wheel-index.sh" start
  docker image inspect python:3.11-slim >/dev/null 2>&1 || "$DOCKER_TOOLS/make-cpython-image.sh"
  COMPOSE=("$DOCKER_TOOLS/compose-local.sh")
  # Debian's 20.10 CLI drives the engine's BuildKit (the 28.x CLI has no buildx here).
  BUILD=(env DOCKER_BUILDKIT=1 /usr/bin/docker build --network host)
else
  COMPOSE=(docker compose)
  BUILD=(env DOCKER_BUILDKIT=1 docker build --network host)
fi
compose() { "${COMPOSE[@]}" "$@"; }

CPU_ARGS=(--build-arg TORCH=cpu)
for arg in TORCH_CPU_INDEX_URL TORCH_VERSION TORCHVISION_VERSION; do
  [ -z "${!arg:-}" ] || CPU_ARGS+=(--build-arg "$arg=${!arg}")
done

ready_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/health/ready" || true; }

# wait_healthy CID T0: print "ready healthy" seconds since T0, or fail.
wait_healthy() {
  local cid=$1 t0=$2 t_ready="" state
  for _ in $(seq 1800); do
    [ "$(docker inspect -f '{{.State.Running}}' "$cid")" = true ] \
      || { docker logs "$cid" | tail -20; fail "container exited while starting"; }
    [ -n "$t_ready" ] || { [ "$(ready_code)" = 200 ] && t_ready=$(now); }
    state=$(docker inspect -f '{{.State.Health.Status}}' "$cid")
    if [ "$state" = healthy ] && [ -n "$t_ready" ]; then
      echo "$(secs "$t0" "$t_ready") $(secs "$t0" "$(now)")"; return
    fi
    sleep 0.1
  done
  fail "not healthy after 180 s"
}

# sigterm_exit CID [STOP COMMAND...]: SIGTERM (docker kill -s TERM, or the command, e.g.
# `docker compose stop`, run in the background), readiness must turn 503 while draining,
# then exit code 0.
sigterm_exit() {
  local cid=$1 t0 code seen503=no
  shift
  t0=$(now)
  if [ $# -gt 0 ]; then "$@" >/dev/null 2>&1 & else docker kill --signal TERM "$cid" >/dev/null; fi
  for _ in $(seq 20); do
    code=$(ready_code)
    [ "$code" = 503 ] && { seen503=yes; break; }
    [ "$code" = 000 ] && break
    sleep 0.1
  done
  code=$(docker wait "$cid")
  wait  # the stop command, if any
  echo "SIGTERM: readiness 503 while draining: $seen503; exit code $code after $(secs "$t0" "$(now)") s"
  [ "$seen503" = yes ] || fail "readiness did not turn 503 after SIGTERM"
  [ "$code" = 0 ] || { docker logs "$cid" | tail -20; fail "exit code $code after SIGTERM"; }
}

# Only serving code and dependencies in the image: no tests, no training extras, no dev tools.
check_contents() {
  local image=$1
  docker run --rm --network host --entrypoint python "$image" -c '
import importlib.util, os, sys
extra = [m for m in ("pytest", "tqdm", "matplotlib", "ruff", "mypy", "hypothesis") if importlib.util.find_spec(m)]
files = [p for p in ("/app/tests", "/app/.git", "/app/pyproject.toml") if os.path.exists(p)]
plots = [f for d, _, fs in os.walk("/app/models") for f in fs if f.endswith((".png", ".csv"))]
print("uid", os.getuid(), "| models", sorted(os.listdir("/app/models")))
sys.exit(f"unexpected in the image: {extra + files + plots}" if extra or files or plots or os.getuid() == 0 else 0)
'
}

smoke_image() {
  local variant=$1 image=$2 cid t0 times torch
  shift 2
  log "build $image ($variant)"
  t0=$(now)
  "${BUILD[@]}" "$@" -t "$image" .
  result "$variant build: $(secs "$t0" "$(now)") s, image $(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=si)B ($image)"
  check_contents "$image"
  torch=$(docker run --rm --network host --entrypoint python "$image" -c \
    'import torch, torchvision; print(torch.__version__, torchvision.__version__, "cuda", torch.version.cuda)')
  result "$variant torch: $torch"

  log "run $image"
  t0=$(now)
  cid=$(docker run -d --network host --read-only --tmpfs /tmp \
    -e MNIST_SERVE_PORT="$PORT" -e MNIST_SERVE_DRAIN_DELAY_S=$DRAIN_DELAY "$image")
  CID=$cid
  times=$(wait_healthy "$cid" "$t0")
  result "$variant docker run -> ready ${times% *} s, -> healthy ${times#* } s"
  echo "device: $(curl -fsS "$URL/models" | python3 -c 'import json,sys; print({m["name"]: m["device"] for m in json.load(sys.stdin)["models"]})')"
  "$PY" deploy/smoke_client.py "$URL" || fail "predictions"
  result "$variant $(sigterm_exit "$cid")"
  docker rm "$cid" >/dev/null
  CID=""
}

smoke_compose() {
  local files=(-f docker-compose.yml -f docker-compose.cpu.yml) t0 cid build=--build
  # A given tag is an image built before: never rebuild it with the CPU variant's build args.
  [ -z "${MNIST_SERVE_IMAGE_TAG:-}" ] || build=--no-build
  log "docker compose ${files[*]} up $build --wait (image mnist-serve:${MNIST_SERVE_IMAGE_TAG:-cpu})"
  export MNIST_SERVE_PORT=$PORT MNIST_SERVE_DRAIN_DELAY_S=$DRAIN_DELAY
  t0=$(now)
  COMPOSE_DOWN=("${COMPOSE[@]}" "${files[@]}")
  compose "${files[@]}" up -d $build --wait
  result "compose up $build --wait (CPU variant, mnist-serve:${MNIST_SERVE_IMAGE_TAG:-cpu}): $(secs "$t0" "$(now)") s"
  cid=$(compose "${files[@]}" ps -q api)
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$cid")" = healthy ] || fail "compose: not healthy"
  [ -z "$(docker inspect -f '{{json .HostConfig.DeviceRequests}}' "$cid" | grep -i nvidia)" ] \
    || fail "compose CPU variant still reserves a GPU"
  "$PY" deploy/smoke_client.py "$URL" || fail "predictions"
  # `compose stop` (as `down` does): SIGTERM, and restart: unless-stopped leaves it stopped.
  result "compose $(sigterm_exit "$cid" "${COMPOSE[@]}" "${files[@]}" stop -t 30 api)"
  compose "${files[@]}" down
  COMPOSE_DOWN=()
}

for step in "${STEPS[@]}"; do
  case "$step" in
    cuda) smoke_image cuda mnist-serve:latest ;;
    cpu) smoke_image cpu mnist-serve:cpu "${CPU_ARGS[@]}" ;;
    compose) smoke_compose ;;
    *) fail "unknown step '$step' (cuda, cpu, compose)" ;;
  esac
done

log "summary"
printf '%s\n' "${RESULTS[@]}"
echo "smoke: all passed"
