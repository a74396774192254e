#!/usr/bin/env bash
# The GPU figures of docs/engine.md in one go, sized to finish in about ten minutes on one recent GPU:
# the checked path against the float32 engine and the reference for ResNet-20, ResNet-110 and ResNet-50 (with the
# share re-evaluated and the audit), then the ImageNet-scale projection. Each step has its own time limit, so a slow
# one cannot take the others with it; every output goes to the terminal and to $OUT (default: gpu-figures/).
#
#     bash benchmarks/gpu_figures.sh            # on a machine with CUDA
set -u -o pipefail
out="${OUT:-gpu-figures}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
    | tee "$out/device.txt" || exit 2
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$out/$name.txt"
    timeout "$limit" "$@" 2>&1 | grep -v "^W[0-9]" | tee -a "$out/$name.txt"
}
step resnet20 150 python engine.py --device cuda --cases resnet20 --members 3 --repeats 2 --n 20000
step resnet110 150 python engine.py --device cuda --cases resnet110 --members 3 --repeats 2 --n 20000
step resnet50 150 python engine.py --device cuda --cases resnet50 --members 3 --repeats 2 --n 4000
step imagenet 120 python imagenet_scale.py --device cuda --n 2000 --repeats 2
