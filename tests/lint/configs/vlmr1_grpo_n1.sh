# VLM-R1 REC GRPO launch (run_scripts/run_grpo_rec.sh layout) with the setup from the field:
# one generation per prompt and bf16.
PROJECT_ROOT="$( cd "$( dirname "${BASH_SOURCE[0]}" )/.." && pwd )"
export REPO_HOME="${PROJECT_ROOT}"
data_paths="/data/rec_jsonsl_train/refcoco_train.jsonl"
image_folders="/data/coco"
model_path="Qwen/Qwen2.5-VL-3B-Instruct"
export EXP_NAME="Qwen2.5-VL-3B-Instruct-rec"
cd ${REPO_HOME}/src/open-r1-multimodal
export DEBUG_MODE="true"

torchrun --nproc_per_node="8" \
    --nnodes="1" \
    --node_rank="0" \
    --master_addr="127.0.0.1" \
    --master_port="12349" \
  src/open_r1/grpo_jsonl.py \
    --use_vllm False \
    --output_dir ${REPO_HOME}/checkpoints/rl/${EXP_NAME} \
    --model_name_or_path $model_path \
    --data_file_paths $data_paths \
    --image_folders $image_folders \
    --task_type rec \
    --per_device_train_batch_size 8 \
    --gradient_accumulation_steps 2 \
    --gradient_checkpointing true \
    --logging_steps 1 \
    --num_train_epochs 2 \
    --bf16 \
    --attn_implementation flash_attention_2 \
    --run_name ${EXP_NAME} \
    --max_prompt_length 1024 \
    --num_generations 1 \
    --max_completion_length 2048 \
    --reward_funcs accuracy format \
    --beta 0.04 \
    --report_to wandb \
    --deepspeed ${REPO_HOME}/src/open-r1-multimodal/local_scripts/zero3.json
