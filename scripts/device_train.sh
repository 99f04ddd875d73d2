#!/usr/bin/env bash
# Train emorec models on a GPU machine that has JAX but no TensorFlow.
#
#   scripts/device_train.sh PACK OUT_DIR "ARCH:EPOCHS[:extra key=value ...]" ...
#
# PACK is a data pack made by `emorec pack` (FER2013 train+val: about 56 MiB
# with xz). Each job runs `emorec train PACK --recipe fer2013 --arch ARCH
# --epochs EPOCHS` with KERAS_BACKEND=jax; jobs run side by side on the one
# GPU (small 48x48 models leave most of it idle). Run folders land in
# OUT_DIR/runs; the run folders (without last.keras) are tarred and split
# into 15 MiB parts so they can travel back (`cat parts > runs.tar`).
set -euo pipefail
pack=$1; out=$2; shift 2
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
python3 -c "import jax; assert jax.default_backend() == 'gpu', 'JAX sees no GPU'"
mkdir -p "$out"
pids=()
for job in "$@"; do
  IFS=: read -r arch epochs extra <<<"$job"
  name="${arch}-e${epochs}"
  timeout "${JOB_SECONDS:-540}" python3 -m emorec train "$pack" --recipe fer2013 --arch "$arch" --epochs "$epochs" \
      --project /tmp/runs --name "$name" $extra 2>&1 | tee "$out/$name.log" | sed -u "s/^/[$name] /" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
(cd /tmp && tar --exclude='last.keras' -cf - runs) | split -b 15M - "$out/runs.tar.part-"
exit $status
