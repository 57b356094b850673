"""Loading YAML: profiles, recipes and scenarios resolved, overridden and validated at once.

Every error names the file, the dotted key and what is allowed, in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedmammo.config.dotted import apply_dotted
from fedmammo.config.profile import CentreProfile
from fedmammo.config.scenario import Scenario, StrategySpec
from fedmammo.errors import ConfigError

__all__ = ["load_profile", "load_scenario", "load_strategy", "project_root"]


def project_root() -> Path:
    """The directory holding centres/, strategies/ and scenarios/ (cwd, else the checkout)."""
    here = Path.cwd()
    if (here / "centres").is_dir():
        return here
    return Path(__file__).resolve().parents[2]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: broken YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _format_validation(path: Path | str, exc: ValidationError) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see README 'Scenario reference')"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{path}: key '{key}': {msg}")
    return ConfigError("\n".join(lines))


def _resolve_ref(ref: str, folder: str, base: Path) -> Path:
    """A bare stem names ``<root>/<folder>/<stem>.yaml``; anything else is a path, relative
    to the referring file (or to the project root)."""
    p = Path(ref)
    if p.suffix not in (".yaml", ".yml") and len(p.parts) == 1:
        candidates = [project_root() / folder / f"{ref}.yaml", base / folder / f"{ref}.yaml"]
    else:
        candidates = [base / p, project_root() / p]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]


def load_profile(path: str | Path, overrides: dict[str, Any] | None = None) -> CentreProfile:
    """Load and validate a centre profile YAML, with optional dotted-key overrides."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        apply_dotted(data, key, value)
    try:
        return CentreProfile.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(path, exc) from None


def load_strategy(path: str | Path, overrides: dict[str, Any] | None = None) -> StrategySpec:
    """Load and validate a strategy recipe YAML (its params checked by the kind's model)."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    quick = dict(data.get("quick") or {})
    for key, value in (overrides or {}).items():
        apply_dotted(data, key, value)
        if key.startswith("params."):  # a scenario's override wins over the recipe's quick
            quick.pop(key.removeprefix("params."), None)
            quick[key.removeprefix("params.")] = value
    if quick:
        data["quick"] = quick
    try:
        spec = StrategySpec.model_validate(data)
        spec.typed_params()
        spec.typed_params(quick=True)
    except ValidationError as exc:
        raise _format_validation(path, exc) from None
    return spec


def load_scenario(
    path: str | Path,
    *,
    sets: dict[str, Any] | None = None,
    quick: bool = False,
) -> Scenario:
    """Load a scenario, resolve its profiles and recipe, apply overrides, validate it all.

    ``sets`` are dotted keys (``--set``) applied to the scenario mapping; keys starting with
    ``strategy.`` go to the recipe's params, ``centres.<name>.`` to a centre's overrides.
    """
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    if quick:
        for key, value in dict(data.get("quick") or {}).items():
            _apply_set(data, key, value)
    for key, value in (sets or {}).items():
        _apply_set(data, key, value)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(path, exc) from None
    scenario.source_file = str(path.resolve())

    if isinstance(scenario.strategy, str):
        strategy_path = _resolve_ref(scenario.strategy, "strategies", path.parent)
        if not strategy_path.is_file():
            raise ConfigError(
                f"{path}: key 'strategy': recipe {scenario.strategy!r} not found "
                f"(looked for {strategy_path}); fix: name a file in strategies/"
            )
        scenario.strategy = load_strategy(strategy_path, scenario.strategy_overrides)
    try:
        scenario.recipe.typed_params(quick=quick)
    except ValidationError as exc:
        raise _format_validation(f"{path} (strategy {scenario.recipe.name})", exc) from None

    seen: set[str] = set()
    for i, entry in enumerate(scenario.centres):
        profile_path = _resolve_ref(entry.profile, "centres", path.parent)
        if not profile_path.is_file():
            raise ConfigError(
                f"{path}: key 'centres.{i}.profile': profile {entry.profile!r} not found "
                f"(looked for {profile_path}); fix: name a file in centres/"
            )
        overrides = dict(entry.overrides)
        if entry.name:
            overrides["name"] = entry.name
        if scenario.privacy is not None:
            prof_data = _read_yaml(profile_path)
            if "privacy" not in prof_data and "privacy" not in {k.split(".")[0] for k in overrides}:
                overrides["privacy"] = scenario.privacy.model_dump()
        profile = load_profile(profile_path, overrides)
        entry.name = profile.name
        if profile.name in seen:
            raise ConfigError(
                f"{path}: key 'centres.{i}': centre name {profile.name!r} used twice; "
                "fix: give each entry a distinct 'name'"
            )
        seen.add(profile.name)
        scenario.resolved_profiles[profile.name] = profile
    _check_roles(path, scenario)
    return scenario


def _apply_set(data: dict[str, Any], key: str, value: Any) -> None:
    if key.startswith("strategy."):
        data.setdefault("strategy_overrides", {})
        data["strategy_overrides"][key.removeprefix("strategy.")] = value
        return
    if key.startswith("centres.") and not key.split(".")[1].isdigit():
        _, name, rest = key.split(".", 2)
        for entry in data.get("centres", []):
            if entry.get("name") == name or Path(str(entry.get("profile"))).stem == name:
                entry.setdefault("overrides", {})[rest] = value
                return
        raise ConfigError(f"--set {key}: no centre named {name!r} in the scenario")
    apply_dotted(data, key, value)


def _check_roles(path: Path, scenario: Scenario) -> None:
    for entry in scenario.centres:
        profile = scenario.resolved_profiles[entry.name or ""]
        if entry.role == "sharer" and not (profile.sharing.generators or profile.sharing.models):
            raise ConfigError(
                f"{path}: centre {entry.name!r} has role 'sharer' but its profile shares nothing; "
                "fix: set sharing.generators: true in its profile or change its role"
            )
    names = {e.name for e in scenario.centres}
    for i, fault in enumerate(scenario.faults):
        if fault.centre not in names:
            raise ConfigError(
                f"{path}: key 'faults.{i}.centre': no centre named "
                f"{fault.centre!r}; valid: {', '.join(sorted(names))}"
            )
    if not any(e.role in ("train", "receiver") for e in scenario.centres):
        raise ConfigError(f"{path}: key 'centres': no centre has role 'train' or 'receiver'")
