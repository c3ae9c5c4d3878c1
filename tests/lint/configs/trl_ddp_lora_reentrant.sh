# TRL SFT of a VLM with LoRA on 4 GPUs (accelerate launch, plain DDP): reentrant checkpointing plus
# ddp_find_unused_parameters, the "marked as ready twice" setup.
accelerate launch --num_processes 4 --multi_gpu \
    sft_vlm.py \
    --model_name_or_path Qwen/Qwen2-VL-2B-Instruct \
    --dataset_name HuggingFaceH4/llava-instruct-mix-vsft \
    --output_dir sft-qwen2-vl \
    --per_device_train_batch_size 2 \
    --gradient_accumulation_steps 8 \
    --use_peft \
    --lora_r 16 \
    --lora_alpha 32 \
    --gradient_checkpointing \
    --gradient_checkpointing_kwargs '{"use_reentrant": true}' \
    --ddp_find_unused_parameters true \
    --max_length 4096 \
    --bf16
