FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini gunicorn.conf.py flowerconfig.py ./
COPY app ./app
COPY workers ./workers
COPY migrations ./migrations
RUN pip install -e . && useradd --create-home bff && mkdir -p /srv/var && chown bff /srv/var
USER bff
EXPOSE 3001 5555
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
