"""`vlmcheck demo`: the bundled LLaMA-Factory run, judged offline."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--max-length", type=click.IntRange(min=1), default=4096, show_default=True,
              help="With --scan: the max length (the LLaMA-Factory run reads cutoff_len from its config).")
@click.option("--model-type", type=click.Choice(["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]), default="qwen2_vl",
              show_default=True)
@click.option("--scan", "bare", is_flag=True,
              help="Scan the bundled dataset with the bare processor (vlmcheck scan) instead of the LLaMA-Factory run.")
def demo_command(max_length: int, model_type: str, bare: bool) -> None:
    """Judge the bundled LLaMA-Factory run as LLaMA-Factory will prepare it (vlmcheck check); real images, real
    Qwen2 tokenizer, offline. --scan: the bare-processor scan of the bundled dataset instead.

    Needs the `dashscope` package for the tokenizer's BPE ranks: pip install --no-deps dashscope==2.0.2
    """
    from vlmcheck.demo.run import demo, demo_check

    try:
        if bare:
            report, command = demo(max_length=max_length, model_type=model_type)
        elif model_type == "qwen3_vl":
            raise click.UsageError("the bundled LLaMA-Factory run uses the qwen2_vl template: use --scan for qwen3_vl")
        else:
            report, command = demo_check(model_type=model_type)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"$ {command}\n")
    click.echo(report.render(), nl=False)
