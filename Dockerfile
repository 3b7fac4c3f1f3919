# One image for the API and the workers; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ONNXPLAIN_MODEL_DIR=/models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY service service
COPY worker worker
COPY client client
COPY openapi.yaml gunicorn.conf.py ./
COPY demo demo
ARG EXTRAS=explain
RUN pip install --no-cache-dir ".[${EXTRAS}]"
RUN useradd --create-home onnxplain && mkdir -p /models && chown onnxplain /models
USER onnxplain
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "service.app:create_app()"]
