# Sourced by gpu_sweep.sh and record_gpu.sh on a lent GPU: the wheels missing there (from the git-ignored
# .gpu/ folder that travels with the working tree), the environment, and what the machine has ($OUT/env.txt).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export BANKINTENT_DATA_DIR=$PWD/.gpu/data TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, accelerate, sklearn; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'sklearn', sklearn.__version__, torch.cuda.get_device_name(0))"
  nproc; } 2>&1 | tee $OUT/env.txt
