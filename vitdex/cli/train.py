"""``vitdex train ...``: DreamBooth training runs.

``vitdex train DATASET --base MODEL ...`` starts a run (``start`` is implied), ``vitdex
train resume RUN_ID`` continues one from its last checkpoint, ``vitdex train list`` shows
runs with their state, step and loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from vitdex.cli.common import (
    Context,
    err_console,
    handle_errors,
    open_catalog,
    out_console,
    print_json,
    print_table,
)

if TYPE_CHECKING:
    from vitdex.config import Settings


class _TrainGroup(click.Group):
    """A group whose first argument is a dataset unless it names a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group("train", cls=_TrainGroup)
def train_group() -> None:
    """Train Stable Diffusion on a dataset (``vitdex train DATASET --base MODEL``); resume
    and list runs."""


def run_training_job(settings: Settings, job_id: int, *, progress: bool) -> None:
    """Run a train job here, with this command's settings, drawing its progress on stderr."""
    from vitdex.training.determinism import reproducible_cpu_math

    reproducible_cpu_math()  # before torch's first product (vitdex.training.determinism)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from vitdex.jobs.training import run_train_job
    from vitdex.training.quiet import quiet_hub

    if not progress:
        with quiet_hub():
            run_train_job(settings, job_id)
        return
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )
    with bar:
        task = bar.add_task("loading", total=None, loss="", rate="")

        def show(event: dict[str, Any]) -> None:
            phase = event.get("phase") or ""
            stage = event.get("stage")
            loss = event.get("loss")
            rate = event.get("it_per_s")
            bar.update(
                task,
                description=f"{phase} ({stage})" if stage else phase,
                completed=event.get("step") or 0,
                total=event.get("total_steps") or None,
                loss=f"loss {loss:.4f}" if loss is not None else "",
                rate=f"{rate:.2f} it/s" if rate else "",
            )

        with quiet_hub():
            run_train_job(settings, job_id, on_progress=show)


def _finish(obj: Context, run_id: int, job_id: int, *, as_json: bool, background: bool) -> None:
    from vitdex.training.runs import show_run

    run = show_run(open_catalog(obj.settings), run_id)
    if background:
        result: dict[str, Any] = {"run_id": run_id, "job_id": job_id, "state": run["state"]}
        if as_json:
            print_json(result)
        else:
            out_console.print(f"run {run_id} queued as job {job_id}; `vitdex train list` shows it")
        return
    # The run follows its job (run_job_guarded's on_end): its job state and error say it.
    job_state, job_error = run["job_state"], run["error"]
    result = {
        "run_id": run_id,
        "state": run["state"],
        "steps": run["step"],
        "loss": run["loss"],
        "checkpoint": run["checkpoint"],
        "output_dir": run["output_dir"],
    }
    if as_json:
        print_json(result)
    elif run["checkpoint"]:
        ckpt = run["checkpoint"]
        out_console.print(
            f"run {run_id}: {run['step']} steps, loss {run['loss']:.4f}\n"
            f"checkpoint {ckpt['id']}: {ckpt['path']}\nsha256 {ckpt['sha256']}"
        )
    else:
        out_console.print(f"run {run_id}: {run['state']} at step {run['step']}")
    if job_state == "failed":
        from vitdex.errors import VitdexError

        raise VitdexError(f"training run {run_id} failed: {job_error}")
    if job_state == "cancelled":
        err_console.print(f"stopped; `vitdex train resume {run_id}` continues from the last save")


def _say_steps(saved: dict[str, Any]) -> None:
    """Print the run's step counts on stderr before it starts: the text encoder steps
    add to the UNet steps in two-stage mode, which ``--steps`` alone does not say."""
    from vitdex.training.config import TrainConfig

    config = TrainConfig.from_dict(saved)
    unet, text = config.steps, config.text_encoder_steps
    if config.mode != "two-stage":
        text = min(text, unet)
    err_console.print(
        f"training: {unet} UNet steps, {text} text-encoder steps, "
        f"{config.total_steps} steps in total ({config.mode})",
        highlight=False,
    )


def _submit(obj: Context, job_id: int) -> None:
    from vitdex.errors import ConfigError
    from vitdex.jobs.queue import make_queue

    settings = obj.settings
    if not settings.api.redis_url:
        raise ConfigError(
            "--background needs a queue: give --redis-url (VITDEX_REDIS_URL) and run "
            "`vitdex worker` with the same flags"
        )
    queue = make_queue(settings)
    try:
        queue.submit(job_id, kind="train")
    finally:
        queue.close()


def _recover(obj: Context) -> None:
    """Requeue (or cancel) runs whose process died before they are shown, so a killed
    ``vitdex train`` or worker does not read running for ever. With Redis the requeued
    jobs are submitted; without, ``vitdex train resume`` (or ``vitdex serve``) runs them."""
    from vitdex.jobs.queue import JobQueue, make_queue
    from vitdex.jobs.recovery import recover_orphans

    settings = obj.settings
    queue: JobQueue | None = make_queue(settings) if settings.api.redis_url else None
    try:
        recover_orphans(
            open_catalog(settings), queue, stale_after_s=settings.jobs.job_stale_after_s
        )
    finally:
        if queue is not None:
            queue.close()


@train_group.command("start")
@click.argument("dataset")
@click.option(
    "--base", "base_model", required=True, help="Hub id, diffusers folder or .safetensors/.ckpt."
)
@click.option(
    "--version",
    type=click.Choice(["sd15", "sd21-base", "sd21", "sdxl"]),
    help="Base version (detected when omitted).",
)
@click.option(
    "--base-config", help="Diffusers folder with the configs of a single-file base (offline)."
)
@click.option("--resolution", type=int, help="Training resolution (default: the version's).")
@click.option("--steps", type=click.IntRange(min=0), help="UNet steps (default 800).")
@click.option(
    "--text-encoder-steps",
    type=click.IntRange(min=0),
    help="Text encoder steps (default 350; with --steps alone, --steps x 350/800, rounded).",
)
@click.option(
    "--mode",
    type=click.Choice(["two-stage", "joint"]),
    help="Text encoder first, or both together.",
)
@click.option("--lr", "learning_rate", type=float, help="UNet learning rate.")
@click.option(
    "--text-encoder-lr",
    "text_encoder_learning_rate",
    type=float,
    help="Text encoder learning rate.",
)
@click.option("--lr-scheduler", help="constant, constant_with_warmup, linear, cosine, ...")
@click.option("--lr-warmup-steps", type=click.IntRange(min=0))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--gradient-accumulation", "gradient_accumulation_steps", type=click.IntRange(min=1))
@click.option(
    "--prior-preservation/--no-prior-preservation",
    default=None,
    help="Default: on when the dataset has class images.",
)
@click.option("--prior-loss-weight", type=float)
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "fp16", "bf16"]))
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None)
@click.option("--cache-latents/--no-cache-latents", default=None)
@click.option(
    "--8bit-adam",
    "use_8bit_adam",
    is_flag=True,
    default=None,
    help="Same as --optimizer adamw8bit (bitsandbytes, CUDA only).",
)
@click.option(
    "--lora-rank",
    type=click.IntRange(min=0),
    help="LoRA rank (0: full fine-tune; SDXL trains LoRA unless 0 on a 22.5 GiB GPU).",
)
@click.option(
    "--preset",
    type=click.Choice(["8gb", "12gb", "24gb"]),
    help="Memory preset: settings that fit a GPU of this size (`vitdex train presets`); "
    "options given explicitly win.",
)
@click.option(
    "--optimizer",
    type=click.Choice(["adamw", "adamw8bit", "adafactor"]),
    help="adamw, adamw8bit (bitsandbytes, CUDA) or adafactor (default for full SDXL).",
)
@click.option(
    "--fused-backward/--no-fused-backward",
    default=None,
    help="Step each weight as its gradient is ready and free the gradient (less memory; "
    "clipping per weight, no gradient accumulation, not with fp16).",
)
@click.option(
    "--buckets/--square",
    "buckets",
    default=None,
    help="Aspect-ratio buckets, or square crops (default: the dataset's crop mode).",
)
@click.option(
    "--bucket-max-upscale",
    type=click.FloatRange(min=1.0),
    help="Most an image is scaled up to fill its bucket (default 2).",
)
@click.option(
    "--caption-dropout",
    type=click.FloatRange(0.0, 1.0),
    help="Share of draws trained with an empty caption (default 0).",
)
@click.option(
    "--shuffle-tags/--no-shuffle-tags",
    default=None,
    help="Shuffle comma-separated caption tags per draw.",
)
@click.option(
    "--keep-tokens",
    type=click.IntRange(min=0),
    help="Leading tags kept in place when shuffling (default 1: the trigger word).",
)
@click.option(
    "--sample-every", type=click.IntRange(min=0), help="Sample images every N steps (0: never)."
)
@click.option(
    "--sample-prompt",
    "sample_prompts",
    multiple=True,
    help="Prompt of the sample images (repeat for several; default: the instance prompt).",
)
@click.option("--sample-seed", type=click.IntRange(min=0), help="Seed of the first sample.")
@click.option("--sample-steps", type=click.IntRange(min=1), help="Denoising steps per sample.")
@click.option(
    "--sample-resolution",
    type=click.IntRange(min=8),
    help="Sample side in pixels (default: training's).",
)
@click.option(
    "--validation-images",
    type=click.IntRange(min=0),
    help="Instance images held out for a validation loss (0: none).",
)
@click.option(
    "--validation-every",
    type=click.IntRange(min=0),
    help="Validation loss every N steps (0: at the end only).",
)
@click.option(
    "--ema/--no-ema", default=None, help="Keep a moving average of the weights; output uses it."
)
@click.option(
    "--ema-decay",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    help="Decay of the moving average per step (default 0.999).",
)
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--save-every", type=click.IntRange(min=0), help="Checkpoint every N steps.")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--force", is_flag=True, default=None, help="Accept combinations the base registry refuses."
)
@click.option(
    "--background", is_flag=True, help="Queue the run for `vitdex worker` instead of training here."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def start_command(
    obj: Context,
    /,
    dataset: str,
    base_model: str,
    background: bool,
    no_progress: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train a DreamBooth checkpoint on DATASET (name or id), convert and register it."""
    from vitdex.training.bases import check_base_available, version_of
    from vitdex.training.presets import apply_preset, full_run_defaults, preset_summary
    from vitdex.training.runs import create_run

    settings = obj.settings
    # A hub base that offline mode cannot load fails now, with exit code 3 and no run.
    check_base_available(base_model)
    given = {key: value for key, value in options.items() if value is not None}
    given["sample_prompts"] = list(given["sample_prompts"])
    if not given["sample_prompts"]:
        del given["sample_prompts"]
    version = version_of(base_model, given.get("version"))
    chosen = apply_preset(given, version) if given.get("preset") else given
    chosen = full_run_defaults(chosen, version)
    run, job_id = create_run(settings, open_catalog(settings), dataset, base_model, chosen)
    if given.get("preset"):
        lines = preset_summary(str(given["preset"]), version, given, run.config)
        err_console.print("\n".join(lines), highlight=False)
    _say_steps(run.config)
    if background:
        _submit(obj, job_id)
    else:
        run_training_job(settings, job_id, progress=not no_progress and not as_json)
    _finish(obj, run.id, job_id, as_json=as_json, background=background)


@train_group.command("presets")
@click.option(
    "--version",
    type=click.Choice(["sd15", "sd21-base", "sd21", "sdxl"]),
    default="sd15",
    show_default=True,
    help="Base version the settings are for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@handle_errors
def presets_command(version: str, as_json: bool) -> None:
    """Memory presets for a base version: the settings each chooses and its expected peak
    memory (an estimate from parameter counts, not a measurement)."""
    from vitdex.training.presets import describe_presets

    rows = describe_presets(version)
    if as_json:
        print_json(rows)
        return
    table = [
        (
            row["preset"],
            f"{row['expected_memory_gb']:.1f}",
            "yes" if row["fits"] else "no",
            ", ".join(f"{k}={v}" for k, v in row["settings"].items()),
        )
        for row in rows
    ]
    columns = ("preset", "expected GiB", "fits", "settings")
    print_table(
        f"memory presets for {version}", columns, table, fold={"settings"}, right={"expected GiB"}
    )


@train_group.command("resume")
@click.argument("run_id", type=click.IntRange(min=1))
@click.option(
    "--force",
    is_flag=True,
    help="Resume although its job reads running (its worker on another host is gone).",
)
@click.option("--background", is_flag=True, help="Queue it for `vitdex worker`.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def resume_command(
    obj: Context, run_id: int, force: bool, background: bool, no_progress: bool, as_json: bool
) -> None:
    """Continue run RUN_ID from its last checkpoint (same final weights as an unbroken run)."""
    from vitdex.training.runs import resume_run

    settings = obj.settings
    run, job_id = resume_run(
        open_catalog(settings),
        run_id,
        force=force,
        stale_after_s=settings.jobs.job_stale_after_s,
    )
    if background:
        _submit(obj, job_id)
    else:
        run_training_job(settings, job_id, progress=not no_progress and not as_json)
    _finish(obj, run.id, job_id, as_json=as_json, background=background)


@train_group.command("list")
@click.option(
    "--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"])
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_command(obj: Context, state: str | None, as_json: bool) -> None:
    """Training runs, newest first, with state, step and loss."""
    from vitdex.training.runs import list_runs

    _recover(obj)
    runs = list_runs(open_catalog(obj.settings), state=state)
    if as_json:
        print_json(runs)
        return
    if not runs:
        out_console.print("no training runs")
        return
    rows = [
        (
            str(run["id"]),
            run["state"],
            f"{run['step']}/{run['total_steps']}",
            "-" if run["loss"] is None else f"{run['loss']:.4f}",
            f"{run['base_model']} ({run['version']})",
            str(run["dataset_id"] or "-"),
            run["checkpoint"]["path"] if run["checkpoint"] else "-",
        )
        for run in runs
    ]
    columns = ("id", "state", "step", "loss", "base", "dataset", "checkpoint")
    print_table("training runs", columns, rows, fold={"base", "checkpoint"})


@train_group.command("show")
@click.argument("run_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def show_command(obj: Context, run_id: int, as_json: bool) -> None:
    """One run with its full training config."""
    from vitdex.training.runs import show_run

    _recover(obj)
    run = show_run(open_catalog(obj.settings), run_id)
    if as_json:
        print_json(run)
        return
    for key, value in run.items():
        if key != "config":
            out_console.print(f"[bold]{key}[/bold]: {value}")
    out_console.print("[bold]config[/bold]:")
    for key, value in sorted(run["config"].items()):
        out_console.print(f"  {key} = {value}")


@train_group.command("cancel")
@click.argument("run_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def cancel_command(obj: Context, run_id: int, as_json: bool) -> None:
    """Ask a queued or running run to stop (it saves a checkpoint first); a queued run,
    or one whose process died, is cancelled at once."""
    from vitdex.training.runs import cancel_run

    settings = obj.settings
    stale = settings.jobs.job_stale_after_s
    run = cancel_run(open_catalog(settings), run_id, stale_after_s=stale)
    if as_json:
        print_json(run)
    elif run["state"] == "cancelled":
        out_console.print(f"run {run_id}: cancelled")
    else:
        out_console.print(f"run {run_id}: cancel requested")
