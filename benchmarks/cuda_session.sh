#!/usr/bin/env bash
# What a session lent a GPU runs, in one call, most valuable first (a loan is 15 minutes):
#   1. tests/model/test_cuda.py: CUDA against CPU, compiled against eager, bf16 autocast's
#      contract, CUDA-graph training against eager training;
#   2. benchmarks/model_throughput.py on CUDA: the train step, small (batch 64) and paper
#      (batch 256), eager and replayed as a CUDA graph (a minute);
#   3. benchmarks/epoch_throughput.py: one whole epoch of the paper_dow windows replayed as
#      CUDA graphs, and 100 eager batches of it, each with the projected epoch of the paper's
#      959k crypto windows;
#   4. the small config compiled (LargeExecutionModel.compile), alone and replayed as a CUDA
#      graph. The paper config's compile did not finish in 230 s on an H100 (2026-11): it
#      wants a call of its own, `model_throughput.py --device cuda --only paper --cuda-graphs
#      --compile` with a limit of 10 minutes.
# Each part has a time limit, so one slow part cannot eat the loan (a device call is at most
# 600 s; these add up to 520). Inductor is told to compile with one worker per core
# (TORCHINDUCTOR_COMPILE_THREADS): with it the small config compiled in about a minute, where
# a first try without it ran out of its 190 s (that second try also had the first one's
# inductor cache, so how much each did is not separated).
# The device's python holds torch but not this project's pipeline dependencies, so the
# windows are built beforehand (lem_pipeline.windows.build_windows, or `lem run --preset
# paper_dow`) and carried. Logs go to $OUT (the device tool's) or ./cuda_session_out.
#
#   bash benchmarks/cuda_session.sh WINDOWS_DIR
set -u
windows=${1:?usage: bash benchmarks/cuda_session.sh WINDOWS_DIR}
out=${OUT:-cuda_session_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}
py=${PYTHON:-python3}
nvidia-smi -L
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# -c /dev/null: the project's pytest settings name dagster's warning classes, absent there.
timeout 150 $py -m pytest -c /dev/null -p no:cacheprovider -q -rA tests/model/test_cuda.py 2>&1 | tee "$out/tests.log"
timeout 90 $py benchmarks/model_throughput.py --device cuda --steps 20 --cuda-graphs --profile 8 2>&1 | tee "$out/throughput.log"
{
    timeout 90 $py benchmarks/epoch_throughput.py --windows "$windows" --cuda-graphs
    timeout 40 $py benchmarks/epoch_throughput.py --windows "$windows" --samples 25600
} 2>&1 | tee "$out/epoch.log"
timeout 150 $py benchmarks/model_throughput.py --device cuda --steps 20 --only small --cuda-graphs --compile 2>&1 | tee "$out/compiled.log"
