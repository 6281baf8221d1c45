# vitdex: one image for the API (`vitdex serve`) and the workers (`vitdex worker`).
#
# torch comes pinned by constraints.txt. PyPI's torch wheel for Linux is the CUDA build
# (several GB). For a CPU-only image pass the PyTorch CPU wheel index, whose 2.13.0+cpu
# sorts above PyPI's 2.13.0 and so is the one installed:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<PyTorch CPU wheel index> .
# For GPUs, build FROM an nvidia/cuda runtime image with Python 3.11 instead and keep the
# default wheel; see README ("Docker").
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    VITDEX_HOME=/data \
    HF_HOME=/data/hf

WORKDIR /app
COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY vitdex ./vitdex
# A plain install: the Alembic scripts ship inside the package (vitdex/migrations).
RUN pip install -c constraints.txt '.[heif,postgres,qdrant,cluster,train]'

RUN useradd --create-home --uid 1000 vitdex && mkdir -p /data && chown vitdex /data
USER vitdex
VOLUME ["/data"]
EXPOSE 8000
CMD ["vitdex", "serve", "--host", "0.0.0.0", "--port", "8000"]
