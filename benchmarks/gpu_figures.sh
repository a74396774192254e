#!/usr/bin/env bash
# The GPU figures of docs/engine.md in one go, sized to finish in under eight minutes on one recent GPU: one table
# (benchmarks/gpu_table.py: the float32 reference loop, the float32 engine, plain bf16 and bf16-checked on random and
# confident members, for 3 x ResNet-20, 3 x ResNet-50 and the default digits pipeline), then the ImageNet-scale
# projection. Each step has its own time limit, so a slow one cannot take the others with it; every output goes to
# the terminal and to $OUT (default: gpu-figures/), the table to $OUT/table.md row by row.
#
#     bash benchmarks/gpu_figures.sh            # on a machine with CUDA
#     SMOKE=1 bash benchmarks/gpu_figures.sh    # tiny sizes on a CPU: checks that every step runs
set -u -o pipefail
out="${OUT:-gpu-figures}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")"
py="${PYTHON:-python}"  # the interpreter with ensemblecert installed
if [ -n "${SMOKE:-}" ]; then
    table=("$py" gpu_table.py --device cpu --smoke --out "$out")
    scale=("$py" imagenet_scale.py --device cpu --n 8 --batch 4 --image 32 --repeats 1)
else
    "$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
        | tee "$out/device.txt" || exit 2
    table=("$py" gpu_table.py --device cuda --out "$out")
    scale=("$py" imagenet_scale.py --device cuda --n 2000 --repeats 2)
fi
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.txt"
    timeout "$limit" "$@" 2>&1 | grep -v "^W[0-9]" | tee -a "$out/$name.txt"
}
step table 330 "${table[@]}"
step imagenet 110 "${scale[@]}"
echo "== the table: $out/table.md"
cat "$out/table.md"
