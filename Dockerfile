# The container of `--software-deployment-method apptainer` (the Snakefile's `container:` directive): Python with
# the CPU build of torch and rankaudit with every dependency of pyproject.toml and the `real` extra (gguf). Build
#   docker build -t rankaudit:0.1.0 .
#   apptainer build rankaudit.sif docker-daemon://rankaudit:0.1.0
# (docs/CLUSTER.md, "Software deployment"). For GPU nodes swap TORCH_INDEX for a CUDA index, e.g.
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128. The image holds a copy of src/: rebuild it after
# changing the package.
FROM python:3.11-slim

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from its own index, so that the project's torch range is already met and pip pulls no other build
RUN python -m pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"

WORKDIR /opt/rankaudit
COPY pyproject.toml ./
COPY src ./src
RUN python -m pip install ".[real]"
