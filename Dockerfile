FROM python:3.11-slim
# The versions come from uv.lock, installed by uv into /srv/.venv, whose bin/
# (bff, gunicorn, celery) is on PATH. Keep UV_VERSION equal to the Makefile's.
# UV_COMPILE_BYTECODE: .pyc files at build time, as pip wrote them; with
# PYTHONDONTWRITEBYTECODE every process would otherwise compile its imports.
ARG UV_VERSION=0.13.9
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/srv/.venv PATH=/srv/.venv/bin:$PATH
WORKDIR /srv
RUN pip install "uv==${UV_VERSION}"
# The dependencies first: this layer changes only with the lock.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-install-project --python /usr/local/bin/python3.11
# Then the project itself (editable, without the test extra).
COPY README.md alembic.ini gunicorn.conf.py flowerconfig.py ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN uv sync --locked --no-dev --python /usr/local/bin/python3.11 \
    && useradd --create-home bff && mkdir -p /srv/var && chown bff /srv/var
USER bff
EXPOSE 3001 5555
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
