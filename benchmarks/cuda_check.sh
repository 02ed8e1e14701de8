#!/usr/bin/env bash
# Every GPU path once, on a CUDA machine: training of the three tasks under AMP, evaluation, bench and
# export, then (where the CPU has AMX / AVX512-BF16) the CPU bf16 figures of issue 5 on two pinned cores.
# CI has no GPU, so this is run by hand:
#
#     bash benchmarks/cuda_check.sh OUT_DIR        # about 10 minutes on one H100
#
# Each step's log goes to OUT_DIR/NAME.log; a summary line per step is printed (ok / FAILED rc=N).
set -u
out=${1:-runs/cuda-check}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failures=0

step() {  # step NAME COMMAND...: run, log, say ok or FAILED with the log's tail
    local name=$1 started=$SECONDS rc=0
    shift
    "$@" >"$out/$name.log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then
        echo "ok      $name ($((SECONDS - started)) s)"
    else
        failures=$((failures + 1))
        echo "FAILED  $name rc=$rc ($((SECONDS - started)) s)"
        tail -n 8 "$out/$name.log" | sed 's/^/        /'
    fi
}

vov() { "$py" -m vovnet "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda)'

step classify_bf16 vov train --device cuda --amp bf16 --epochs 2 --out "$out/classify" --quiet --json
step classify_fp16 vov train --device cuda --amp fp16 --epochs 1 --out "$out/classify16" --quiet --json
step classify_eval vov eval --device cuda --checkpoint "$out/classify/best.safetensors" --json
step detect_centermask vov train --task detect --device cuda --amp bf16 --epochs 1 --limit-train 64 --limit-val 16 --out "$out/detect" --quiet --json
step detect_mask_rcnn vov train --task detect --arch mask_rcnn_sag --device cuda --epochs 1 --limit-train 32 --limit-val 8 --out "$out/detect_rcnn" --quiet --json
step segment_fp16 vov train --task segment --device cuda --amp fp16 --epochs 1 --limit-train 64 --limit-val 16 --out "$out/segment" --quiet --json
step bench_infer vov bench --device cuda --model vovnet39 --batch 32 --precision fp16 --deploy --vs timm --json
step bench_train vov bench --device cuda --model vovnet39 --batch 32 --mode train --precision bf16 --vs timm --json
step bench_memeff vov bench --device cuda --model vovnet39 --batch 16 --mode train --grad-checkpointing --vs timm --json
step export_onnx vov export "$out/classify/best.safetensors" "$out/classify.onnx" --dynamic-batch
# Whole detectors and segmenters (issue 19, item 5): eager against deployed fp32 / fp16 / bf16 and torchvision's, on
# the GPU; the CUDA-trained detector exported whole and checked in onnxruntime's CPU provider.
dense="--task detect --arch centermask --model vovnet39 --device cuda --vs torchvision --iters 20 --json"
step dense_detect_fp32 vov bench $dense --deploy
step dense_detect_fp16 vov bench $dense --deploy --precision fp16
step dense_detect_bf16 vov bench $dense --deploy --precision bf16
step dense_segment_fp16 vov bench --task segment --arch fpn_semantic --model vovnet19_slim_dw --img-size 512 \
    --device cuda --vs torchvision --iters 20 --deploy --precision fp16 --json
step export_detector vov export "$out/detect/best.safetensors" "$out/detect.onnx"
# VoVNetV2-99 on six cameras (benchmarks/RESULTS.md, "VoVNetV2-99 on six cameras"): peak activation memory and step
# time of plain, memory-efficient (set_grad_checkpointing) and per-block torch.utils.checkpoint training, with and
# without the FPN, at 800x320, 1600x640 and 1600x900; the two-process DDP check; the ONNX export on the host CPU.
step multicamera_memory "$py" benchmarks/multicamera_memory.py --device cuda --sizes 800x320 1600x640 1600x900 \
    --json "$out/multicamera_memory.jsonl"
step multicamera_ddp "$py" -m pytest -q -p no:cacheprovider tests/test_multicamera.py
step multicamera_onnx "$py" benchmarks/multicamera_export.py --size 1600x640 --out "$out/v99_six_cameras.onnx" --threads 16
# Video end to end against inference alone on the GPU (decoding and encoding stay on the CPU).
step video_gpu "$py" benchmarks/video.py --device cuda --precision fp16 --out "$out/video_gpu.json"

if grep -q amx_bf16 /proc/cpuinfo; then
    grep -m1 "model name" /proc/cpuinfo
    for mode in infer train; do
        step "cpu_bf16_$mode" taskset -c 0,1 "$py" -m vovnet bench --model vovnet39 --batch 8 --mode "$mode" \
            --precision bf16 --deploy --vs timm --threads 2 --iters 5 --json
        step "cpu_fp32_$mode" taskset -c 0,1 "$py" -m vovnet bench --model vovnet39 --batch 8 --mode "$mode" \
            --deploy --vs timm --threads 2 --iters 5 --json
    done
    for precision in bf16 fp32; do  # whole CenterMask V-39 on two cores (fp32 deploy: Winograd)
        step "cpu_dense_$precision" taskset -c 0,1 "$py" -m vovnet bench --task detect --arch centermask --model vovnet39 \
            --deploy --precision "$precision" --vs torchvision --threads 2 --iters 5 --json
    done
else
    echo "this CPU has no AMX: the CPU bf16 figures are not measured here"
fi
for f in "$out"/bench_*.log "$out"/dense_*.log "$out"/cpu_*.log "$out"/multicamera_*.log "$out"/video_*.log; do
    [ -f "$f" ] && echo "$(basename "$f"): $(tail -n 1 "$f")"
done
exit "$failures"
