#!/bin/bash
# Issue 14's sweep on the lent GPU: configs/sweep_study.yaml, several runs at once; only the run records come back.
source docs/results/study/gpu_setup.sh || exit 1
# the sweep file with the carried base model (float16-rounded weights, loaded as float32)
sed 's|^  data: banking77$|  data: banking77\n  base_model: .gpu/base|' configs/sweep_study.yaml > /tmp/sweep_study.yaml
grep -n base_model /tmp/sweep_study.yaml || exit 1
start=$(date +%s)
( while sleep 60; do echo "[$(( $(date +%s) - start )) s] $(ls /tmp/study/runs/*/seed-*/metrics.json 2>/dev/null | wc -l) runs done; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done ) &
timeout ${BUDGET:-480} python3 -m bankintent.cli sweep --config /tmp/sweep_study.yaml --output /tmp/study --jobs ${JOBS:-16} > $OUT/sweep.log 2>&1
echo "sweep exit $? after $(( $(date +%s) - start )) s"
kill %1 2>/dev/null
cd /tmp/study && tar czf $OUT/study.tgz --exclude=adapter --exclude=checkpoints --exclude='adapter.partial' --exclude='*.safetensors' . && ls -la $OUT
cat /tmp/study/results.md | head -60
grep -l "Error\|Traceback" /tmp/study/runs/*/seed-*/train.log | head -3 | xargs -r tail -5
