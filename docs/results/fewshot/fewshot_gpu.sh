#!/bin/bash
# Issue 15's distillation levers on a lent GPU, 5 and 10 examples per intent, draws 42, 43, 44: the default
# few-shot model (`bankintent train --shots K`, method auto: contrastive), then two born-again students of it
# (`bankintent distill TEACHER --layers 6`):
#   self: with 8 perturbed copies of each example, labelled by the teacher (nothing but the K examples);
#   logs: with Banking77's 10,003 training queries as unlabelled queries (the chat logs a bank has, unlabelled).
# Run beside the record driver: BESIDE=docs/results/fewshot/fewshot_gpu.sh bash docs/results/study/record_gpu.sh
# (which sets up the environment); only the run records come back (fewshot.tgz, fewshot.log), no weights.
# FEWSHOT_TRAIN_EXTRA, FEWSHOT_DISTILL_EXTRA: more flags (tiny dry runs); FEWSHOT_DEADLINE: seconds after which
# what still runs is stopped (SIGINT), so that the summary and the records come back in time.
out=${FEWSHOT_OUT:-/tmp/fewshot}
unlabelled=${FEWSHOT_UNLABELLED:-$PWD/.gpu/data/train.csv}
base=${FEWSHOT_BASE:-$PWD/.gpu/base}
left() { local s=$(( ${FEWSHOT_DEADLINE:-480} - SECONDS )); echo $(( s > 1 ? s : 1 )); }  # timeout 0 would never stop
chain() {  # the teacher of K examples per intent, draw S, then its two students side by side
    local dir=$out/$1-shot/seed-$2
    mkdir -p $dir
    timeout -s INT $(left) python3 -m bankintent.cli train --data banking77 --base-model "$base" --shots $1 --seed $2 --output $dir/teacher \
        $FEWSHOT_TRAIN_EXTRA > $dir/teacher.log 2>&1 || { echo "$1-shot seed $2: teacher failed"; return; }
    timeout -s INT $(left) python3 -m bankintent.cli distill $dir/teacher --layers 6 --augment-copies 8 --seed $2 --output $dir/self \
        $FEWSHOT_DISTILL_EXTRA > $dir/self.log 2>&1 &
    timeout -s INT $(left) python3 -m bankintent.cli distill $dir/teacher --layers 6 --unlabelled "$unlabelled" --seed $2 --output $dir/logs \
        $FEWSHOT_DISTILL_EXTRA > $dir/logs.log 2>&1 &
    wait
    echo "$1-shot seed $2 done after $SECONDS s"
}
for shots in 5 10; do for seed in 42 43 44; do chain $shots $seed & done; done
wait
summary() {
    python3 - "$out" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| examples per intent | model | draws | test accuracy | each draw (42, 43, 44) | training s |")
print("|---|---|--:|--:|---|--:|")
for shots in (5, 10):
    for model in ("teacher", "self", "logs"):
        runs = [json.loads(m.read_text()) for m in sorted(out.glob(f"{shots}-shot/seed-*/{model}/metrics.json"))]
        if runs:
            test = [100 * r["test_accuracy"] for r in runs]
            spread = f"{statistics.mean(test):.2f} ± {statistics.stdev(test) if len(test) > 1 else 0:.2f}%"
            secs = "-".join(f"{r['train_seconds']:.0f}" for r in runs)
            print(f"| {shots} | {model} | {len(runs)} | {spread} | {', '.join(f'{t:.2f}' for t in test)} | {secs} |")
EOF
}
summary | tee ${OUT:-/tmp}/fewshot.log
cd $out && tar czf ${OUT:-/tmp}/fewshot.tgz --exclude=adapter --exclude=checkpoints --exclude='*.safetensors' .
