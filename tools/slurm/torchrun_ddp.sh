#!/usr/bin/env bash
# cs-lightning with torchrun: DDP on one machine or several, without SLURM.
#
#   one machine, 4 GPUs:   bash tools/slurm/torchrun_ddp.sh
#   two machines:          NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash tools/slurm/torchrun_ddp.sh   (on the first)
#                          NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash tools/slurm/torchrun_ddp.sh   (on the second)
#   CPU only (a check):    NPROC=2 ACCELERATOR=cpu bash tools/slurm/torchrun_ddp.sh
#
# torchrun starts NPROC processes per machine and sets RANK, WORLD_SIZE, MASTER_ADDR/PORT; Lightning reads them
# (TorchElasticEnvironment), so trainer.devices and num_nodes must match. torchrun forwards SIGTERM to the
# workers: each saves last.ckpt at the end of its current batch and exits 0; run the same command again to resume.
set -euo pipefail
NPROC=${NPROC:-4}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATOR=${ACCELERATOR:-gpu}
CONFIG=${CONFIG:-configs/bert_intent.yaml}
EXPERIMENT=${EXPERIMENT:-$(basename "${CONFIG}" .yaml)}

RESUME=()
[ -f "logs/${EXPERIMENT}/checkpoints/last.ckpt" ] && RESUME=(--ckpt_path last)

export TOKENIZERS_PARALLELISM=false
exec torchrun --nnodes="${NNODES}" --node-rank="${NODE_RANK}" --nproc-per-node="${NPROC}" \
    --master-addr="${MASTER_ADDR}" --master-port="${MASTER_PORT}" \
    -m cs_lightning.commands.train fit --config "${CONFIG}" --config configs/trainer/ddp.yaml \
    --trainer.accelerator="${ACCELERATOR}" --trainer.devices="${NPROC}" --trainer.num_nodes="${NNODES}" \
    --experiment="${EXPERIMENT}" "${RESUME[@]}" "$@"
