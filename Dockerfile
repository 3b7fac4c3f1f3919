# One image for the API and the workers; docker-compose.yml picks the command.
# It installs exactly requirements.lock (Linux x86_64, CPython 3.11), as CI does.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ONNXPLAIN_MODEL_DIR=/models
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY engine engine
COPY service service
COPY worker worker
COPY client client
COPY sdk sdk
COPY openapi.yaml gunicorn.conf.py ./
COPY demo demo
RUN pip install --no-cache-dir --no-deps --no-build-isolation . && pip check
# EXTRAS=explain,gpu (docker-compose's worker-gpu): the gpu extra is outside the lock,
# since onnxruntime-gpu replaces onnxruntime; it takes the locked onnxruntime's version.
ARG EXTRAS=explain
RUN case ",${EXTRAS}," in *,gpu,*) \
      v="$(sed -n 's/^onnxruntime==\([^ ]*\).*/\1/p' requirements.lock)" && pip uninstall -y onnxruntime && \
      pip install --no-cache-dir --no-deps "onnxruntime-gpu==$v";; esac
RUN useradd --create-home onnxplain && mkdir -p /models && chown onnxplain /models
USER onnxplain
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "service.app:create_app()"]
