"""The packages' layers: `dapo` (the shared library) imports no service, each service imports only `dapo`
and itself, and only the top (`dapo.cli`, `dapo.launch`) imports the services; nothing imports the top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"dapo_controller", "dapo_reward", "dapo_rollout", "dapo_trainer"}
TOP = ("dapo.cli", "dapo.launch")


def imported(path: Path) -> set[str]:
    """The absolute modules `path` imports, wherever in the file (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_name(path: Path, base: Path) -> str:
    return ".".join(path.relative_to(base).with_suffix("").parts).removesuffix(".__init__")


def modules() -> dict[str, set[str]]:
    found = {module_name(p, ROOT): imported(p) for p in (ROOT / "dapo").rglob("*.py")}
    for package in SERVICES:
        base = ROOT / "services" / package.removeprefix("dapo_")
        found.update({module_name(p, base): imported(p) for p in (base / package).rglob("*.py")})
    return found


def is_top(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in TOP)


def violations(found: dict[str, set[str]]) -> list[str]:
    """What breaks the layers in `found` (module -> the modules it imports)."""
    wrong = []
    for name, imports in sorted(found.items()):
        package = name.split(".")[0]
        services = {i.split(".")[0] for i in imports} & SERVICES
        if is_top(name):
            continue
        if any(is_top(i) for i in imports):
            wrong.append(f"{name} imports the top layer: {sorted(i for i in imports if is_top(i))}")
        if package == "dapo" and services:
            wrong.append(f"{name} (the shared library) imports services {sorted(services)}")
        if package in SERVICES and services - {package}:
            wrong.append(f"{name} imports other services {sorted(services - {package})}")
    return wrong


def test_the_layers_hold() -> None:
    found = modules()
    assert "dapo.launch.launcher" in found and "dapo_trainer.train" in found  # the walk found the tree
    wrong = violations(found)
    assert not wrong, "\n".join(wrong)


def test_a_broken_layer_is_seen(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dapo.launch.launcher import launch\n    import dapo_reward.main\n")
    assert imported(bad) == {"dapo.launch.launcher", "dapo_reward.main"}
    assert violations(
        {
            "dapo.batch": {"dapo_trainer.train"},  # the library importing a service
            "dapo_reward.main": {"dapo.cli", "dapo_rollout.client"},  # the top; another service
            "dapo.launch.slurm": {"dapo_controller.settings"},  # the top may
            "dapo_rollout.engine": {"dapo.weights", "dapo_rollout.settings"},  # itself and the library
        }
    ) == [
        "dapo.batch (the shared library) imports services ['dapo_trainer']",
        "dapo_reward.main imports the top layer: ['dapo.cli']",
        "dapo_reward.main imports other services ['dapo_rollout']",
    ]
