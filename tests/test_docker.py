"""The container files: they validate, lint clean, and use only what the project has.

No Docker engine runs here, so the images are not built in the tests; what can be checked
without one is: `docker-compose config` (Debian's docker-compose), hadolint on the Dockerfiles,
and that every command, option, entry point, file and environment variable they use exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
ENV_EXAMPLE = DOCKER / ".env.example"
# Variables read by software we depend on, not by this project.
THIRD_PARTY_ENV = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                   "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD",
                   "MC_USER", "MC_PASSWORD"}


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def project_services():
    return {name: s for name, s in compose()["services"].items() if str(s.get("image", "")).startswith("controlnext-video")}


def tool(name: str) -> str:
    found = shutil.which(name) or (str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else None)
    if not found:
        pytest.skip(f"{name} is not installed (CI installs it: see .ci/run)")
    return found


def test_compose_file_validates(tmp_path):
    env = tmp_path / ".env"
    env.write_text(ENV_EXAMPLE.read_text())
    result = subprocess.run([tool("docker-compose"), "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env), "config"],
                            capture_output=True, text=True, cwd=DOCKER)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert {"postgres", "object-store", "prefect-server", "setup", "cpu-worker", "gpu-worker"} <= set(rendered["services"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_use_files_of_the_repository(dockerfile):
    text = dockerfile.read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies {source}, which the repository lacks"
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, flags=re.M), "the image must not run as root"
    assert "HEALTHCHECK" in text
    assert 'ENTRYPOINT ["controlnext-video"]' in text
    assert 'controlnext-video = "flows.cli:main"' in (REPO_ROOT / "pyproject.toml").read_text()


def test_commands_exist_in_the_cli():
    import typer.main

    from flows.cli import app

    group = typer.main.get_command(app)
    for name, service in project_services().items():
        command = service["command"]
        sub = group.commands.get(command[0])
        assert sub is not None, f"{name}: no `controlnext-video {command[0]}` command"
        options = {opt for param in sub.params for opt in param.opts + param.secondary_opts}
        for word in command[1:]:
            if word.startswith("--"):
                assert word in options, f"{name}: `controlnext-video {command[0]}` has no option {word}"
    for dockerfile in DOCKERFILES:
        cmd = re.search(r'^CMD \[(.+)\]$', dockerfile.read_text(), flags=re.M).group(1)
        words = [w.strip().strip('"') for w in cmd.split(",")]
        sub = group.commands[words[0]]
        options = {opt for param in sub.params for opt in param.opts + param.secondary_opts}
        assert all(w in options for w in words[1:] if w.startswith("--")), dockerfile.name


def test_environment_variables_exist_in_the_project():
    sources = "\n".join(p.read_text() for package in ("controlnext_video", "pose", "storage", "flows")
                        for p in (REPO_ROOT / package).rglob("*.py"))
    sources += (REPO_ROOT / "prefect.yaml").read_text()
    names = set()
    for service in compose()["services"].values():
        names |= set((service.get("environment") or {}).keys())
    for dockerfile in DOCKERFILES:
        names |= set(re.findall(r"^\s+(CONTROLNEXT_[A-Z_]+)=", dockerfile.read_text(), flags=re.M))
    assert names
    for name in sorted(names):
        if name in THIRD_PARTY_ENV:
            continue
        if name.startswith("PREFECT_"):
            assert _is_prefect_setting(name), f"{name} is not a Prefect setting"
        else:
            assert name in sources, f"{name} is set by the container files but the project never reads it"


def _is_prefect_setting(name: str) -> bool:
    from prefect.settings import Settings

    def aliases(info):
        alias = info.validation_alias
        choices = getattr(alias, "choices", [alias] if alias else [])
        return {str(c).upper() for c in choices if isinstance(c, str)}

    def walk(model, prefix):
        for field, info in model.model_fields.items():
            full = f"{prefix}_{field.upper()}"
            if full == name or name in aliases(info):
                return True
            annotation = info.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields") and walk(annotation, full):
                return True
        return False

    return walk(Settings, "PREFECT")


def test_env_example_covers_the_required_variables():
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (DOCKER / "compose.yaml").read_text()))
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert required <= example, required - example
