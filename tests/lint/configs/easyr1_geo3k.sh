#!/bin/bash
# EasyR1 launch (examples/qwen2_5_vl_7b_geo3k_grpo.sh layout): a YAML plus dotted overrides
set -x
MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct
python3 -m verl.trainer.main \
    config=easyr1_clean.yaml \
    data.train_files=hiyouga/geometry3k@train \
    worker.actor.model.model_path=${MODEL_PATH} \
    worker.rollout.temperature=0 \
    worker.actor.global_batch_size=100 \
    trainer.experiment_name=qwen2_5_vl_7b_geo_grpo \
    trainer.n_gpus_per_node=8
