# ms-swift GRPO of Qwen2.5-VL on 4 GPUs (docs' multimodal GRPO command layout)
CUDA_VISIBLE_DEVICES=0,1,2,3 \
NPROC_PER_NODE=4 \
MAX_PIXELS=1003520 \
swift rlhf \
    --rlhf_type grpo \
    --model Qwen/Qwen2.5-VL-7B-Instruct \
    --dataset AI-ModelScope/clevr_cogen_a_train \
    --tuner_type lora \
    --torch_dtype bfloat16 \
    --num_generations 8 \
    --per_device_train_batch_size 3 \
    --gradient_accumulation_steps 1 \
    --max_length 1024 \
    --max_completion_length 1024 \
    --temperature 0 \
    --reward_funcs accuracy format \
    --output_dir output
