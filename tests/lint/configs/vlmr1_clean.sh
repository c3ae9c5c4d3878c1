# VLM-R1 REC GRPO launch as in run_scripts/run_grpo_rec.sh: 8 GPUs x 8 per device, 8 generations.
cd src/open-r1-multimodal
export DEBUG_MODE="true"
torchrun --nproc_per_node="8" --nnodes="1" --node_rank="0" --master_addr="127.0.0.1" --master_port="12349" \
  src/open_r1/grpo_jsonl.py \
    --output_dir checkpoints/rl/rec \
    --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct \
    --data_file_paths /data/refcoco_train.jsonl \
    --image_folders /data/coco \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 2 \
    --gradient_checkpointing true \
    --num_generations 8 \
    --max_completion_length 2048 \
    --reward_funcs accuracy format \
    --beta 0.04 \
    --deepspeed local_scripts/zero3.json
