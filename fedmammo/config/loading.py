"""Loading YAML: profiles, recipes and scenarios resolved, overridden and validated at once.

Every error names where the bad value came from (the file, or the override that set it:
``--set strategy.params.rounds=-1``, ``scen.yaml centres.1.overrides 'split.train'``), the
dotted key and what is allowed, in one line.

A run folder keeps ``scenario.resolved.yaml`` (:func:`resolved_mapping`): profiles and the
recipe inlined, every override and the quick block already applied. Loading such a file
reads no other file, so a resumed run cannot pick up an edited profile or recipe.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from fedmammo.config.dotted import apply_dotted, split_dotted
from fedmammo.config.profile import CentreProfile
from fedmammo.config.recipe import params_model
from fedmammo.config.scenario import RESERVED_CENTRE_NAMES, CentreEntry, Scenario, StrategySpec
from fedmammo.errors import ConfigError
from fedmammo.files import replace_whole

__all__ = [
    "Origins",
    "checkout_root",
    "load_profile",
    "load_scenario",
    "load_scenario_traced",
    "load_strategy",
    "read_from",
    "resolved_mapping",
    "search_roots",
    "set_label",
]

#: scenario keys whose mapping value is replaced whole by an override, never merged: a sweep
#: is one grid (its keys are dotted paths, not nested keys), so a sweep point's ``sweep: {}``
#: and a quick block's smaller grid replace it
WHOLE_VALUE_KEYS = ("sweep",)


def checkout_root() -> Path:
    """The fedmammo checkout: the shipped centres/, strategies/ and scenarios/."""
    return Path(__file__).resolve().parents[2]


def search_roots() -> list[Path]:
    """Where centres/, strategies/ and scenarios/ are looked for, first first: the current
    directory (the user's own), then the checkout (the shipped ones)."""
    return _unique([Path.cwd(), checkout_root()])


def _unique(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats (the same file or folder reached twice), in order."""
    seen: set[Path] = set()
    out = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def set_label(key: str, value: Any) -> str:
    """How an override given on the command line is named in errors: ``--set key=value``."""
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    return f"--set {key}={shown}"


@dataclass
class Origins:
    """Where each override came from, so that an error names the override, not only the file.

    ``target`` is what the key is relative to: ``scenario``, ``strategy`` (the recipe
    mapping), ``strategy.quick`` (the recipe's params under --quick) or ``centre:<i>`` (the
    profile of the i-th centre entry).
    """

    entries: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # "scenario" / "strategy" -> file

    def add(self, target: str, key: str | tuple[str, ...], label: str) -> None:
        parts = tuple(key.split(".")) if isinstance(key, str) else tuple(map(str, key))
        self.entries.append((target, parts, label))

    def label(self, target: str, loc: tuple | list, default: str) -> str:
        """The latest override of ``target`` on the path ``loc`` (or above or below it)."""
        loc = tuple(str(p) for p in loc)
        for t, parts, label in reversed(self.entries):
            n = min(len(parts), len(loc))
            if t == target and n and parts[:n] == loc[:n]:
                return label
        return default


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give a YAML file")
    if not path.is_file():
        # where it was looked for, and the fix: the shipped file of that name, else where the
        # shipped ones are (a profile or recipe is named after its folder; else a scenario)
        root = checkout_root()
        folders = ("scenarios", "centres", "strategies")
        kinds = [path.parent.name] if path.parent.name in folders else list(folders)
        kind = kinds[0]
        shipped = sorted(f.stem for f in (root / kind).glob("*.yaml"))
        named = [r / k / f"{path.stem}.yaml" for r in search_roots() for k in kinds]
        same = next((c for c in named if c.is_file()), None)
        if same is not None:
            shown = same.relative_to(Path.cwd()) if same.is_relative_to(Path.cwd()) else same
            fix = f"fix: give {shown}"
        else:
            fix = "fix: give the file's path"
            if root != Path.cwd():
                fix = f"fix: run from the fedmammo checkout ({root}) or give the file's path"
            if shipped:
                fix += f"; shipped {kind}: {', '.join(shipped)}"
        raise ConfigError(f"{path}: file not found (looked for {path.absolute()}); {fix}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: broken YAML: {problem}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); give a readable YAML file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _members(tp: Any) -> tuple[Any, ...]:
    """The types ``tp`` may be: a union's members, each without its Annotated metadata."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) not in (Union, UnionType):
        return (tp,)
    return tuple(m for arg in typing.get_args(tp) for m in _members(arg))


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tp: Any, part: str) -> Any:
    """The type found at ``part`` inside ``tp`` (a model's field, a list's item, a dict's
    value, through unions and Annotated); None where there is none."""
    for member in _members(tp):
        if _is_model(member):
            if part in member.model_fields:
                return member.model_fields[part].annotation
            if part == member.__name__:  # pydantic names the union member it tried
                return member
        elif typing.get_origin(member) in (list, tuple) and part.isdigit():
            return typing.get_args(member)[0]
        elif typing.get_origin(member) is dict:
            return typing.get_args(member)[1]
    return None


def _known_keys(model: type[BaseModel] | None, loc: tuple[str, ...]) -> list[str]:
    """The keys ``model`` accepts at ``loc`` (the fields of the model found there)."""
    tp: Any = model
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    found = next((m for m in _members(tp) if _is_model(m)), None)
    return list(found.model_fields) if found else []


def _format_validation(
    path: Path | str,
    exc: ValidationError,
    origins: Origins | None = None,
    target: str = "",
    prefix: tuple[str, ...] = (),
    shown: tuple[str, ...] = (),
    model: type[BaseModel] | None = None,
) -> ConfigError:
    """One line per error: where (the override that set the key, else the file), key, what.

    ``prefix`` is prepended to each error's location (for the key shown and the override
    looked up); ``shown`` only to the key shown (an inline recipe's ``strategy.``); ``model``:
    the model validated, whose keys an unknown key may misspell ("did you mean").
    """
    lines = []
    errors = exc.errors()
    missing = {tuple(map(str, e["loc"])) for e in errors if e["type"] == "missing"}
    misspelt: dict[tuple, str] = {}  # an unknown key next to the required key it misspells
    for err in errors:
        loc = tuple(map(str, err["loc"]))
        if err["type"] == "extra_forbidden" and loc:
            near = [m[-1] for m in missing if m[:-1] == loc[:-1]]
            close = difflib.get_close_matches(loc[-1], near, n=1)
            if close:
                misspelt[loc] = close[0]
                missing.discard((*loc[:-1], close[0]))
    for err in errors:
        named = [str(p) for p in err["loc"]]
        is_name = named[-1:] == ["[key]"]  # pydantic's mark of a mapping's key (gans.stylegan)
        loc = (*prefix, *(named[:-1] if is_name else named))
        key = ".".join((*shown, *loc)) or "(top level)"
        msg = f"not a valid name here: {err['msg']}" if is_name else err["msg"]
        raw = tuple(map(str, err["loc"]))
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see README 'Scenario reference')"
            near = difflib.get_close_matches(raw[-1], _known_keys(model, raw[:-1]), n=1)
            if raw in misspelt:
                msg = f"unknown key; did you mean '{misspelt[raw]}' (required)?"
            elif near:
                msg = f"unknown key; did you mean '{near[0]}'?"
            elif model is StrategySpec and len(raw) == 1:  # a recipe's parameter, one level up
                msg = f"unknown key; a recipe's parameters are under params: 'params.{raw[0]}'?"
        elif err["type"] == "missing":
            if raw not in missing:
                continue  # reported with the misspelt key
            msg = "required key is missing"
        elif err["type"].endswith(("_type", "_parsing")) and "input" in err:
            msg = f"{msg}, got {_shown_value(err['input'])}"
        where = origins.label(target, loc, str(path)) if origins else str(path)
        lines.append(f"{where}: key '{key}': {msg}")
    return ConfigError("\n".join(dict.fromkeys(lines)))


def _shown_value(value: Any, limit: int = 60) -> str:
    """A value the user wrote, as YAML would show it (a long one cut), and its type."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("...").strip()  # a scalar's document end marker
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}
    kinds |= {int: "an integer", float: "a number", type(None): "empty"}
    kind = kinds.get(type(value), type(value).__name__)
    return f"{text} ({kind})"


def _ref_candidates(ref: str, folder: str, base: Path) -> list[Path]:
    """Where a profile or recipe reference is looked for, first first.

    A bare stem names ``<folder>/<stem>.yaml``: the user's (next to the referring file
    ``base``; beside it when ``base`` is a ``scenarios/`` folder, the checkout's own layout;
    then in the current directory), then the shipped one (the checkout's), so a scenario with
    its own ``centres/`` reads the same files from any folder. Anything else is a path:
    relative to the referring file, the current directory, the checkout.
    """
    p = Path(ref)
    if p.suffix not in (".yaml", ".yml") and len(p.parts) == 1:
        cwd, shipped = Path.cwd(), checkout_root()
        project = [base.parent] if base.name == "scenarios" else []  # the checkout's layout
        return _unique([r / folder / f"{ref}.yaml" for r in (base, *project, cwd, shipped)])
    return _unique([base / p, *(r / p for r in search_roots())])


def _resolve_ref(ref: str, folder: str, base: Path) -> tuple[Path, list[Path]]:
    """The first existing file of :func:`_ref_candidates` (else the first candidate), and
    every candidate (for the error when none exists)."""
    candidates = _ref_candidates(ref, folder, base)
    found = next((c for c in candidates if c.is_file()), candidates[0])
    return found, candidates


def _not_found(kind: str, ref: str, folder: str, looked: list[Path]) -> str:
    """The end of a missing profile / recipe error: every place looked, and the fix."""
    shipped = sorted(f.stem for f in (checkout_root() / folder).glob("*.yaml"))
    listed = f" (shipped: {', '.join(shipped)})" if shipped else ""
    return (
        f"{kind} {ref!r} not found (looked for {', '.join(map(str, looked))}); "
        f"fix: name a file in {folder}/{listed} or give its path"
    )


def _apply(
    data: dict, key: str, value: Any, *, origins: Origins, target: str, default: str
) -> None:
    """apply_dotted, with a failure named after the override that set ``key``."""
    try:
        apply_dotted(data, key, value)
    except ConfigError as exc:
        raise ConfigError(f"{origins.label(target, key.split('.'), default)}: {exc}") from None


def _profile(
    path: Path,
    overrides: dict[str, Any],
    origins: Origins,
    target: str,
) -> CentreProfile:
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    for key, value in overrides.items():
        _apply(data, key, value, origins=origins, target=target, default=str(path))
    try:
        return CentreProfile.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(path, exc, origins, target, model=CentreProfile) from None


def load_profile(path: str | Path, overrides: dict[str, Any] | None = None) -> CentreProfile:
    """Load and validate a centre profile YAML, with optional dotted-key overrides."""
    return _profile(Path(path), dict(overrides or {}), Origins(), "profile")


def _strategy(
    data: dict[str, Any],
    overrides: dict[str, Any],
    origins: Origins,
    where: str,
    shown: tuple[str, ...] = (),
) -> StrategySpec:
    """Validate a recipe mapping after the scenario's overrides; its params with and without
    its quick block (a scenario's params override wins over the recipe's quick)."""
    quick = data.get("quick")
    quick = dict(quick) if isinstance(quick, dict) else quick
    if isinstance(quick, dict):
        for k in quick:
            origins.add("strategy.quick", ("params", *k.split(".")), f"{where} quick '{k}'")
    for key, value in overrides.items():
        _apply(data, key, value, origins=origins, target="strategy", default=where)
        if isinstance(quick, dict):
            label = origins.label("strategy", key.split("."), where)
            for rest, v in _params_keys(key, value):
                _add_last(quick, rest, v)
                origins.add("strategy.quick", ("params", *rest.split(".")), label)
    if quick:
        data["quick"] = quick
    try:
        spec = StrategySpec.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(
            where, exc, origins, "strategy", shown=shown, model=StrategySpec
        ) from None
    try:
        spec.typed_params()
    except ValidationError as exc:
        raise _format_validation(
            where, exc, origins, "strategy", ("params",), shown, params_model(spec.kind)
        ) from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        spec.typed_params(quick=True)
    except ValidationError as exc:
        raise _format_validation(
            f"{where} (its quick block)",
            exc,
            origins,
            "strategy.quick",
            ("params",),
            shown,
            params_model(spec.kind),
        ) from None
    except ConfigError as exc:
        raise ConfigError(f"{where} quick: {exc}") from None
    return spec


def _params_keys(key: str, value: Any) -> list[tuple[str, Any]]:
    """An override of a recipe as keys of its params (what wins over its quick block):
    ``params.a.b: v`` is ``a.b: v``, ``params: {a: v}`` is ``a: v``; none for other keys."""
    if key.startswith("params."):
        return [(key.removeprefix("params."), value)]
    if key == "params" and isinstance(value, dict):
        return list(value.items())
    return []


def _add_last(overrides: dict[str, Any], key: str, value: Any) -> None:
    """Add an override after every other, so that it wins, as if applied after them all.

    A mapping for a key whose entry is a mapping goes in as its dotted keys (``key.a``), after
    that entry (which keeps what it set: ``{}`` still clears first); any other value replaces
    the key's entry.
    """
    old = overrides.get(key)
    if isinstance(old, dict) and isinstance(value, dict) and value:
        for k, v in value.items():
            _add_last(overrides, f"{key}.{k}", v)
        return
    overrides.pop(key, None)
    overrides[key] = value


def load_strategy(path: str | Path, overrides: dict[str, Any] | None = None) -> StrategySpec:
    """Load and validate a strategy recipe YAML (its params checked by the kind's model)."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    return _strategy(data, dict(overrides or {}), Origins(), str(path))


def load_scenario(
    path: str | Path,
    *,
    sets: dict[str, Any] | None = None,
    quick: bool = False,
    labels: dict[str, str] | None = None,
    with_recipe: bool = True,
) -> Scenario:
    """Load a scenario, resolve its profiles and recipe, apply overrides, validate it all.

    ``sets`` are dotted keys (``--set``) applied to the scenario mapping; keys starting with
    ``strategy.`` go to the recipe, ``centres.<name>.`` to a centre's overrides. ``labels``
    names a set key in errors (default ``--set key=value``). ``with_recipe=False``: the centres,
    their profiles and the run settings only; the strategy recipe is neither read nor
    validated (what a site preparing its data needs: no method is imported).
    """
    return load_scenario_traced(
        path, sets=sets, quick=quick, labels=labels, with_recipe=with_recipe
    )[0]


def _entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    centres = data.get("centres")
    return [e for e in centres if isinstance(e, dict)] if isinstance(centres, list) else []


def _entry_name(entry: dict[str, Any], base: Path) -> str:
    """A centre entry's name as the run will call it: its ``name``, else its profile file's
    own ``name``, else the profile's file name (an unreadable profile is named later)."""
    if entry.get("name"):
        return str(entry["name"])
    ref = str(entry.get("profile"))
    try:
        own = _read_yaml(_resolve_ref(ref, "centres", base)[0]).get("name")
    except ConfigError:
        own = None
    return str(own) if own else Path(ref).stem


def _apply_set(
    data: dict[str, Any], key: str, value: Any, origins: Origins, label: str, base: Path
) -> None:
    try:
        parts = split_dotted(key)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    if parts[0] == "strategy" and len(parts) > 1:
        if isinstance(data.get("strategy_overrides"), dict | None):
            data["strategy_overrides"] = dict(data.get("strategy_overrides") or {})
            _add_last(data["strategy_overrides"], ".".join(parts[1:]), value)
            origins.add("strategy", parts[1:], label)
            return
    if parts[0] == "centres" and len(parts) > 1 and not parts[1].lstrip("-").isdigit():
        name = parts[1]
        if len(parts) < 3:
            raise ConfigError(
                f"{label}: name a key of centre {name!r}, e.g. centres.{name}.split.train=0.5"
            )
        names = [_entry_name(e, base) for e in _entries(data)]
        for i, entry in enumerate(_entries(data)):
            if names[i] == name:
                if parts[2] in CentreEntry.model_fields:
                    raise ConfigError(
                        f"{label}: {parts[2]!r} is a key of the scenario's centre entry, not of "
                        f"the profile of centre {name!r} (which centres.{name}. edits); fix: "
                        f"--set centres.{i}.{'.'.join(parts[2:])}=... (by index)"
                    )
                if not isinstance(entry.get("overrides"), dict | None):
                    break  # validation names the bad 'overrides'
                entry["overrides"] = dict(entry.get("overrides") or {})
                _add_last(entry["overrides"], ".".join(parts[2:]), value)
                origins.add(f"centre:{i}", parts[2:], label)
                return
        else:
            users = [
                n for e, n in zip(_entries(data), names) if Path(str(e.get("profile"))).stem == name
            ]
            profile = f" (profile {name!r} is used by {', '.join(users)})" if users else ""
            raise ConfigError(
                f"{label}: no centre named {name!r} in the scenario{profile}; valid: "
                f"{', '.join(names)} (or an index: centres.0....)"
            )
    try:
        apply_dotted(data, key, value, merge=parts[0] not in WHOLE_VALUE_KEYS)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    origins.add("scenario", parts, label)
    if parts[0] == "centres" and len(parts) > 2 and parts[1].isdigit() and parts[2] == "overrides":
        # a profile key by index, or every key of an overrides mapping
        keys = [parts[3:]] if len(parts) > 3 else list(value) if isinstance(value, dict) else []
        for k in keys:
            origins.add(f"centre:{parts[1]}", k, label)


def load_scenario_traced(
    path: str | Path,
    *,
    sets: dict[str, Any] | None = None,
    quick: bool = False,
    labels: dict[str, str] | None = None,
    with_recipe: bool = True,
) -> tuple[Scenario, Origins]:
    """:func:`load_scenario`, plus where each override came from (to name it in errors)."""
    path = Path(path)
    data = _read_yaml(path)
    resolved = bool(data.get("resolved_profiles"))
    if resolved and sets:
        raise ConfigError(
            f"{path}: a run folder's resolved scenario takes no overrides ({', '.join(sets)}); "
            "start a new run from the original scenario to change it"
        )
    data.setdefault("name", path.stem)
    origins = Origins(files={"scenario": str(path), "strategy": str(path)})
    for i, entry in enumerate(_entries(data)):
        if isinstance(entry.get("overrides"), dict):
            for k in entry["overrides"]:
                origins.add(f"centre:{i}", k, f"{path} centres.{i}.overrides '{k}'")
    if isinstance(data.get("strategy_overrides"), dict):
        for k in data["strategy_overrides"]:
            origins.add("strategy", k, f"{path} strategy_overrides '{k}'")
    if quick:
        block = data.get("quick") or {}
        if not isinstance(block, dict):
            raise ConfigError(f"{path}: key 'quick': expected a mapping of dotted keys")
        for key, value in dict(block).items():
            _apply_set(data, key, value, origins, f"{path} quick '{key}'", path.parent)
    for key, value in (sets or {}).items():
        label = (labels or {}).get(key) or set_label(key, value)
        if key.split(".")[0] == "quick":
            raise ConfigError(
                f"{label}: the quick block is applied before --set, so a key set in it has no "
                "effect; fix: set the key itself (e.g. --set strategy.params.rounds=3), which "
                "wins over the quick block"
            )
        _apply_set(data, key, value, origins, label, path.parent)

    inline = data.get("strategy")
    if isinstance(inline, dict):
        data["strategy"] = "(inline)"
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(path, exc, origins, "scenario", model=Scenario) from None
    scenario.source_file = str(path.resolve())

    if with_recipe:
        scenario.strategy = _scenario_recipe(path, scenario, inline, origins)

    seen: set[str] = set()
    for i, entry in enumerate(scenario.centres):
        if resolved:
            profile = scenario.resolved_profiles.get(entry.name or "")
            if profile is None:
                raise ConfigError(
                    f"{path}: key 'resolved_profiles': no profile for centre {entry.name!r}; "
                    "this resolved scenario is damaged: start a new run"
                )
        else:
            profile = _entry_profile(path, scenario, i, origins)
        entry.name = profile.name
        if profile.name in RESERVED_CENTRE_NAMES:
            where = origins.label("scenario", ("centres", str(i), "name"), str(path))
            raise ConfigError(
                f"{where}: key 'centres.{i}': centre name {profile.name!r} is reserved (the "
                "pooled arm's node is 'pooled', the records of no one centre are 'all'); fix: "
                "give the entry another 'name'"
            )
        if profile.name in seen:
            where = origins.label("scenario", ("centres", str(i), "name"), str(path))
            raise ConfigError(
                f"{where}: key 'centres.{i}': centre name {profile.name!r} used twice; "
                "fix: give each entry a distinct 'name'"
            )
        seen.add(profile.name)
        scenario.resolved_profiles[profile.name] = profile
        if f"centre:{i}" in origins.files:
            scenario.source_files[f"centre {profile.name}"] = origins.files[f"centre:{i}"]
    if with_recipe and not resolved and origins.files["strategy"] != str(path):
        scenario.source_files["strategy"] = origins.files["strategy"]
    _check_roles(path, scenario, origins)
    return scenario, origins


def _scenario_recipe(path: Path, scenario: Scenario, inline: Any, origins: Origins) -> StrategySpec:
    """The scenario's strategy recipe (inline or a file in strategies/), overrides applied."""
    overrides = dict(scenario.strategy_overrides)
    if isinstance(inline, dict):
        return _strategy(copy.deepcopy(inline), overrides, origins, f"{path}", ("strategy",))
    ref = str(scenario.strategy)
    strategy_path, looked = _resolve_ref(ref, "strategies", path.parent)
    if not strategy_path.is_file():
        where = origins.label("scenario", ("strategy",), str(path))
        raise ConfigError(
            f"{where}: key 'strategy': {_not_found('recipe', ref, 'strategies', looked)}"
        )
    recipe = _read_yaml(strategy_path)
    recipe.setdefault("name", strategy_path.stem)
    origins.files["strategy"] = str(strategy_path.resolve())
    return _strategy(recipe, overrides, origins, str(strategy_path))


def _entry_profile(path: Path, scenario: Scenario, i: int, origins: Origins) -> CentreProfile:
    entry = scenario.centres[i]
    profile_path, looked = _resolve_ref(entry.profile, "centres", path.parent)
    if not profile_path.is_file():
        where = origins.label("scenario", ("centres", str(i), "profile"), str(path))
        missing = _not_found("profile", entry.profile, "centres", looked)
        raise ConfigError(f"{where}: key 'centres.{i}.profile': {missing}")
    origins.files[f"centre:{i}"] = str(profile_path.resolve())
    overrides = dict(entry.overrides)
    if entry.name:
        overrides["name"] = entry.name
        origins.add(f"centre:{i}", "name", f"{path} centres.{i}.name")
    if scenario.privacy is not None:
        prof_data = _read_yaml(profile_path)
        if "privacy" not in prof_data and "privacy" not in {k.split(".")[0] for k in overrides}:
            overrides["privacy"] = scenario.privacy.model_dump()
            origins.add(
                f"centre:{i}",
                "privacy",
                origins.label("scenario", ("privacy",), f"{path} privacy (scenario-wide default)"),
            )
    return _profile(profile_path, overrides, origins, f"centre:{i}")


def _check_roles(path: Path, scenario: Scenario, origins: Origins) -> None:
    for i, entry in enumerate(scenario.centres):
        profile = scenario.resolved_profiles[entry.name or ""]
        if entry.role == "sharer" and not (profile.sharing.generators or profile.sharing.models):
            where = origins.label("scenario", ("centres", str(i), "role"), str(path))
            raise ConfigError(
                f"{where}: centre {entry.name!r} has role 'sharer' but its profile shares nothing; "
                "fix: set sharing.generators: true in its profile or change its role"
            )
    names = {e.name for e in scenario.centres}
    for i, fault in enumerate(scenario.faults):
        if fault.centre not in names:
            where = origins.label("scenario", ("faults", str(i), "centre"), str(path))
            raise ConfigError(
                f"{where}: key 'faults.{i}.centre': no centre named "
                f"{fault.centre!r}; valid: {', '.join(sorted(n or '' for n in names))}"
            )
    if not any(e.role in ("train", "receiver") for e in scenario.centres):
        raise ConfigError(f"{path}: key 'centres': no centre has role 'train' or 'receiver'")


def resolved_mapping(scenario: Scenario, *, quick: bool) -> dict[str, Any]:
    """The scenario as resolved at the start of a run, loadable by :func:`load_scenario`
    without any other file: profiles and recipe inlined, the recipe's params with ``quick``
    applied, every override and quick block already applied (so emptied), data_dir absolute.
    """
    data = scenario.model_dump(mode="json", exclude={"source_file", "source_files"})
    recipe = scenario.recipe
    data["strategy"] = {
        **recipe.model_dump(mode="json"),
        "params": recipe.typed_params(quick=quick).model_dump(mode="json"),
        "quick": {},
    }
    data["strategy_overrides"] = {}
    data["quick"] = {}
    for entry in data["centres"]:
        entry["overrides"] = {}
    data["data_dir"] = str(Path(scenario.data_dir).expanduser().resolve())
    return data


#: The file a run folder keeps its scenario in, as resolved when the run started.
RESOLVED = "scenario.resolved.yaml"


_SEAL = "# fedmammo: the scenario as this run resolved it; --resume refuses an edited copy. sha256 "


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_resolved(folder: Path, scenario: Scenario, *, quick: bool) -> Path:
    """Write ``folder/scenario.resolved.yaml``: the scenario as resolved now, self-contained,
    under a first line holding the sha256 of the rest (:func:`edited_resolved`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESOLVED
    body = read_from(scenario) + yaml.safe_dump(
        resolved_mapping(scenario, quick=quick), sort_keys=False
    )
    text = f"{_SEAL}{_sha256(body)}\n{body}"
    return replace_whole(path, lambda t: t.write_text(text))


def read_from(scenario: Scenario) -> str:
    """YAML comment lines naming the file each part of ``scenario`` was read from (the recipe,
    each centre's profile); '' for a scenario read from a resolved copy."""
    lines = [f"#   {part}: {file}" for part, file in scenario.source_files.items()]
    if scenario.source_file and lines:
        lines.insert(0, f"#   scenario: {scenario.source_file}")
    return "".join(f"{line}\n" for line in ["# read from:", *lines]) if lines else ""


def edited_resolved(path: Path) -> bool:
    """Whether a run folder's resolved scenario was changed after the run wrote it (False for
    a copy written before fedmammo sealed them)."""
    first, _, body = path.read_text().partition("\n")
    return first.startswith(_SEAL) and first.removeprefix(_SEAL) != _sha256(body)
