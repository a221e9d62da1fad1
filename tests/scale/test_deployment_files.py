"""docker/compose.yaml and docker/nginx.conf describe the multi-node topology (Docker cannot
run here, so the files are checked as data): PostgreSQL, two or more HTTP-only API replicas
behind nginx, a worker, named volumes, health checks, and only settings the service knows."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from harness import REPO_ROOT

from service.config import Settings

DOCKER = REPO_ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_topology() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "api", "worker", "nginx"} <= set(services)
    api, worker = services["api"], services["worker"]
    assert api["command"] == ["loka", "serve", "--no-worker"]
    assert api["deploy"]["replicas"] >= 2
    assert worker["command"] == ["loka", "worker"]
    for name in ("postgres", "api", "worker", "nginx"):
        assert "healthcheck" in services[name], name
        assert services[name].get("restart") == "unless-stopped", name
    assert "/ready" in " ".join(api["healthcheck"]["test"])
    # the api and the worker share one codebook: one database URL and one store volume
    for service in (api, worker):
        env = service["environment"]
        assert env["LOKA_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["LOKA_DATABASE_URL"]
        assert "loka-store:/data" in service["volumes"]
        assert env["LOKA_STORE_DIR"].startswith("/data/")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    volumes = set(compose["volumes"])
    assert {"loka-store", "pg-data"} <= volumes
    assert "pg-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_compose_sets_only_known_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name, service in _compose()["services"].items():
        for var in service.get("environment", {}):
            if var.startswith("LOKA_"):
                assert var.removeprefix("LOKA_") in fields, f"{name}: unknown setting {var}"


def test_nginx_balances_the_api_replicas() -> None:
    conf = (DOCKER / "nginx.conf").read_text()
    nginx = _compose()["services"]["nginx"]
    listen = re.search(r"listen\s+(\d+);", conf)
    assert listen is not None
    assert any(p.endswith(f":{listen.group(1)}") for p in nginx["ports"])
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    assert upstream is not None and "server api:8000" in upstream.group(2)
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    # braces balance (a cheap syntax check: nginx itself cannot run here)
    assert conf.count("{") == conf.count("}")


def test_dockerfile_serves_on_the_port_the_compose_file_checks() -> None:
    dockerfile = Path(DOCKER / "Dockerfile").read_text()
    assert "LOKA_PORT=8000" in dockerfile
    assert "127.0.0.1:8000/ready" in " ".join(_compose()["services"]["api"]["healthcheck"]["test"])
