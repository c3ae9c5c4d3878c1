"""Unsloth vision SFT (the layout of Unsloth's Qwen2-VL notebook): the collator gets no max_seq_length,
so it truncates at the model's 2048 while SFTConfig asks for 4096. Not run by the tests, only read."""

from trl import SFTConfig, SFTTrainer
from unsloth import FastVisionModel
from unsloth.trainer import UnslothVisionDataCollator

model, tokenizer = FastVisionModel.from_pretrained("unsloth/Qwen2-VL-7B-Instruct", load_in_4bit=True)
model = FastVisionModel.get_peft_model(model, r=16, lora_alpha=16)
dataset = []

trainer = SFTTrainer(
    model=model,
    tokenizer=tokenizer,
    data_collator=UnslothVisionDataCollator(model, tokenizer),
    train_dataset=dataset,
    args=SFTConfig(
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=30,
        learning_rate=2e-4,
        output_dir="outputs",
        remove_unused_columns=False,
        dataset_text_field="",
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=4096,
    ),
)
