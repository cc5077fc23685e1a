#!/bin/bash
# GPU check, run on the device machine from the repository root (the working tree is copied there).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export BANKINTENT_DATA_DIR=$PWD/.gpu/data/banking77 TOKENIZERS_PARALLELISM=false
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, accelerate, onnxruntime, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'ort', onnxruntime.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
nproc
} 2>&1 | tee $OUT/env.txt
start=$(date +%s)
timeout 300 python3 -m bankintent.cli train --method lpft --base-model .gpu/model --output /tmp/lpft > $OUT/train.log 2>&1
echo "train exit $? after $(( $(date +%s) - start )) s" | tee -a $OUT/train.log
tail -25 $OUT/train.log
cp /tmp/lpft/metrics.json /tmp/lpft/history.csv /tmp/lpft/learning_curves.png $OUT/ 2>/dev/null
python3 -c "import json; m = json.load(open('/tmp/lpft/metrics.json')); print({k: v for k, v in m.items() if not isinstance(v, (dict, list))})"
timeout 150 python3 benchmarks/stream_predict.py /tmp/lpft --queries 100000 2>/dev/null | tee $OUT/stream.txt
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_export.py tests/test_calibration.py > $OUT/tests.txt 2>&1
echo "pytest exit $?"; tail -30 $OUT/tests.txt
