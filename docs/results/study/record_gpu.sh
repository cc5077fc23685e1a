#!/bin/bash
# Issue 14's record levers on a lent GPU (experiments/record_levers.py: configs/sweep_record.yaml and the students
# distilled from its runs), several processes at once; only the run records come back (no weights).
# It reads a git-ignored .gpu/ folder that travels with the working tree: the wheels of datasets, dill and
# multiprocess (missing there), the base model folder (weights as float16, loaded as float32) and Banking77's CSVs.
set -o pipefail
source docs/results/study/gpu_setup.sh || exit 1
export TQDM_MININTERVAL=10
start=$(date +%s)
beside=
if [ -n "$BESIDE" ]; then bash -c "$BESIDE" & beside=$!; fi  # another script beside the driver (docs/results/fewshot/fewshot_gpu.sh)
( while sleep 60; do echo "[$(( $(date +%s) - start )) s] $(ls /tmp/record/runs/*/seed-*/metrics.json 2>/dev/null | wc -l) runs, $(ls /tmp/record/students/*/seed-*/metrics.json 2>/dev/null | wc -l) students done; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done ) &
monitor=$!
eval "set -- \"\$@\" $LEVERS"  # more options of the driver, e.g. LEVERS='--only "lpft-full lr=2e-4"'
python3 experiments/record_levers.py --output /tmp/record --base-model "$PWD/.gpu/base" --jobs ${JOBS:-16} \
    --deadline ${DEADLINE:-520} --student-time ${STUDENT_TIME:-170} "$@" 2> $OUT/driver.err | tee $OUT/driver.log
kill $monitor 2>/dev/null
[ -n "$beside" ] && wait $beside
tail -c 3000000 $OUT/driver.err > /tmp/err && mv /tmp/err $OUT/driver.err
python3 -m bankintent.cli sweep --config configs/sweep_record.yaml --output /tmp/record --no-train > $OUT/tables.log 2>&1
cd /tmp/record && tar czf $OUT/record.tgz --exclude=adapter --exclude=checkpoints --exclude='*.safetensors' . && ls -la $OUT
cat /tmp/record/results.md | head -40
shopt -s nullglob
for f in /tmp/record/students/*/seed-*/metrics.json; do python3 -c "import json,sys; m=json.load(open('$f')); print('$f'.split('/')[-3:-1], m['val_accuracy'], m['test_accuracy'], m['best_epoch'], m['train_seconds'])"; done
grep -l "Error\|Traceback" /tmp/record/runs/*/seed-*/train.log /tmp/record/students/*/seed-*/train.log 2>/dev/null | head -3 | xargs -r tail -5
