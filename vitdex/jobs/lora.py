"""LoRA jobs: the function a queue runs for job rows of kind ``lora-extract``."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db.models import JobState
from vitdex.jobs.runner import progress_writer, run_job_guarded


def run_lora_extract_job(settings: Settings, job_id: int) -> None:
    """Extract and register the LoRA the job names: params ``{"checkpoint_id", "rank",
    "conv_rank", "text_encoder", "name"}``. Progress counts the layers compared; the
    job's counts name the registered LoRA and how much of the difference it keeps."""
    from vitdex.training.lora import extract_and_register

    def work(sessions: sessionmaker[Session]) -> None:
        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        conv_rank = params.get("conv_rank")
        row = extract_and_register(
            settings,
            int(params["checkpoint_id"]),
            rank=int(params["rank"]),
            conv_rank=None if conv_rank is None else int(conv_rank),
            text_encoder=bool(params.get("text_encoder", True)),
            name=str(params["name"]),
            # The job runs where its worker runs: the GPU when there is one.
            device="auto",
            count=progress_writer(sessions, job_id, every_s=0.5),
        )
        config = dict(row.config or {})
        counts = {
            "checkpoint_id": row.id,
            "name": row.name,
            "path": row.path,
            "source_id": row.source_id,
            "lora_rank": row.lora_rank,
            "layers": config.get("layers"),
            "energy_retained": config.get("energy_retained"),
        }
        with sessions() as session:
            job_sql.end_job(session, job_id, JobState.SUCCEEDED, counts=counts)

    run_job_guarded(settings, job_id, work, what="LoRA extraction")
