"""docker-compose.yml's ``cluster`` profile: six Redis nodes joined by a one-shot job into 3 masters and
3 replicas, three pairroom nodes on that cluster and PostgreSQL, behind nginx; checked with
``docker compose config`` and by reading the file (no container engine runs here)."""

from __future__ import annotations

import re

import yaml

from .test_deploy import COMPOSE_FILE, NGINX_CONF, _run_compose, compose  # noqa: F401


def profile(services: dict, name: str) -> dict[str, dict]:
    return {n: s for n, s in services.items() if name in (s.get("profiles") or [])}


def test_the_cluster_profile_passes_compose_config(compose) -> None:
    result = _run_compose(compose, "--profile", "cluster", "config", "-q", secret="test-secret")
    assert result.returncode == 0, result.stderr
    text = _run_compose(compose, "--profile", "cluster", "config", secret="test-secret").stdout
    assert text.count("PAIRROOM_REDIS: redis+cluster://redis-c1:6379,redis-c2:6379,redis-c3:6379") == 3


def test_the_cluster_profile_has_six_redis_a_create_job_three_nodes_and_a_balancer() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    cluster = profile(services, "cluster")
    redis = {n: s for n, s in cluster.items() if "--cluster-enabled yes" in str(s.get("command"))}
    assert len(redis) == 6, sorted(cluster)
    (create,) = [s for s in cluster.values() if "--cluster create" in str(s.get("command"))]
    assert "--cluster-replicas 1" in str(create["command"]) and create["restart"] == "no"
    assert set(create["depends_on"]) == set(redis)
    nodes = {
        n: s
        for n, s in cluster.items()
        if str((s.get("environment") or {}).get("PAIRROOM_REDIS", "")).startswith("redis+")
    }
    assert len(nodes) == 3
    upstream = set(re.findall(r"server (node\d+):8000", NGINX_CONF.read_text()))
    aliases = set()
    for node in nodes.values():
        seeds = node["environment"]["PAIRROOM_REDIS"].removeprefix("redis+cluster://").split(",")
        assert {seed.split(":")[0] for seed in seeds} <= set(redis)
        assert node["depends_on"]["redis-cluster-create"]["condition"] == "service_completed_successfully"
        assert node["environment"]["PAIRROOM_DB"].startswith("postgresql+asyncpg://")
        aliases |= set(node["networks"]["cluster"]["aliases"])
    assert aliases == upstream, "nginx.conf's upstream names reach the cluster nodes on their network"
    (lb,) = [s for s in cluster.values() if "nginx" in s.get("image", "")]
    assert set(lb["depends_on"]) == set(nodes) and lb["networks"] == ["cluster"]
    # The default stack does not start anything of the profile.
    for name, service in services.items():
        if name not in cluster:
            assert not set(service.get("depends_on") or []) & set(cluster), name
