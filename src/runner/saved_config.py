"""A run's saved config (.hydra/config.yaml), read without trusting the folder it came from.

The report reads the saved config of every run it finds, and `resume=` the one of the run it
continues; either folder may come from someone else. So the file is read only if it is a regular
file of at most MAX_BYTES, parsed by OmegaConf's own YAML loader (safe: no tags that build
objects) with the graph its aliases make bounded (MAX_NODES once expanded: a 400-byte alias bomb
expands to billions), and its interpolations are bounded too (MAX_EXPANSION once each reference is
followed: `a: ${b}${b}`, `b: ${c}${c}`, ... doubles at every key). `runner_resolved` resolves
only the runner's own resolvers (RUNNER_RESOLVERS) and references between keys: `${oc.env:...}`,
or any other resolver, keeps its text, so no environment value reaches a report people share.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from runner.engine.files import read_regular, reason

MAX_BYTES = 1 << 20  # a saved config is a few kB
MAX_NODES = 100_000  # YAML nodes once aliases are expanded
MAX_EXPANSION = 10_000  # interpolations once every reference is followed
# the resolvers configs/ uses in a run's own settings: pure functions of their arguments
RUNNER_RESOLVERS = frozenset({"reg_or", "resume_or"})
RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.\-]*)\s*:")
REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][\w\-]*(?:\.[\w\-]+)*)\s*\}")


class SavedConfigError(ValueError):
    """A saved config that cannot be read within the limits, or is not a mapping."""


class NotAMapping(SavedConfigError):
    """A saved config that parses, to something other than a mapping."""


def load(path: Path) -> dict:
    """The saved config at `path` as plain containers, interpolations unresolved; SavedConfigError
    (with the reason) for a file that is not a regular file of at most MAX_BYTES, does not parse,
    expands past MAX_NODES or MAX_EXPANSION, or is not a mapping."""
    try:
        text = read_regular(Path(path), MAX_BYTES).decode("utf-8")
    except OSError as e:
        raise SavedConfigError(reason(e)) from None
    except UnicodeDecodeError:
        raise SavedConfigError("not UTF-8 text") from None
    data = parse(text)
    if not isinstance(data, dict):
        raise NotAMapping(f"a {type(data).__name__}, not a mapping")
    check_expansion(data)
    return data


def parse(text: str):
    """YAML `text` parsed by OmegaConf's loader, refused before it is built when its aliases would
    expand it past MAX_NODES (or refer to themselves)."""
    from omegaconf._utils import get_yaml_loader

    loader = get_yaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded(node, {}, set()) > MAX_NODES:
            raise SavedConfigError(f"its aliases expand it past {MAX_NODES:,} nodes")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SavedConfigError(first) from None
    except RecursionError:
        raise SavedConfigError("nested too deeply") from None
    finally:
        loader.dispose()


def _expanded(node, sizes: dict, path: set) -> int:
    """Nodes under `node` with every alias expanded (memoized per node: an alias is the same node
    object again); an alias that refers to itself counts as infinite."""
    key = id(node)
    if key in path:
        return MAX_NODES + 1
    if key in sizes:
        return sizes[key]
    path.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            total += _expanded(child, sizes, path)
            if total > MAX_NODES:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded(k, sizes, path) + _expanded(v, sizes, path)
            if total > MAX_NODES:
                break
    path.discard(key)
    sizes[key] = total
    return total


def _leaves(data, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of every leaf (a list's items by index)."""
    items = data.items() if isinstance(data, dict) else enumerate(data)
    out = {}
    for k, v in items:
        key = f"{prefix}{k}"
        out.update(_leaves(v, key + ".") if isinstance(v, (dict, list)) and v else {key: v})
    return out


def check_expansion(data: dict) -> None:
    """SavedConfigError when following every interpolation's references would visit more than
    MAX_EXPANSION interpolations (or a reference cycle): OmegaConf would take that long, or for
    ever, to resolve it."""
    leaves = {k: v for k, v in _leaves(data).items() if isinstance(v, str) and "${" in v}
    under: dict[str, list[str]] = {}  # a key → the interpolating leaves at or below it
    for k in leaves:
        parts = k.split(".")
        for i in range(1, len(parts) + 1):
            under.setdefault(".".join(parts[:i]), []).append(k)
    cost: dict[str, int] = {}

    def of(key: str, seen: frozenset) -> int:
        if key in seen:
            return MAX_EXPANSION + 1
        if key not in cost:
            total = 0
            for k in under.get(key, ()):
                total += leaves[k].count("${")
                total += sum(of(ref, seen | {k}) for ref in REFERENCE.findall(leaves[k]))
                if total > MAX_EXPANSION:
                    break
            cost[key] = total
        return cost[key]

    for key in leaves:
        if of(key, frozenset()) > MAX_EXPANSION:
            raise SavedConfigError(f"its interpolations expand past {MAX_EXPANSION:,} at {key}")


def runner_resolved(data: dict) -> tuple[dict, list[str]]:
    """(the config with the runner's own interpolations resolved, the keys that were not): a value
    that uses any other resolver keeps its text and is listed, as is one whose reference does not
    resolve. `data` comes from `load` (its expansion is bounded)."""
    from omegaconf import OmegaConf

    from runner.config import register_resolvers

    register_resolvers()
    kept: list[str] = []
    safe = _foreign_kept(data, "", kept)
    out = _resolve_each(OmegaConf.create(safe), "", kept)
    return out, kept


def _foreign_kept(node, prefix: str, kept: list[str]):
    """`node` with every string that names a resolver outside RUNNER_RESOLVERS escaped (OmegaConf
    then reads it as its own text), those keys added to `kept`."""
    if isinstance(node, dict):
        return {k: _foreign_kept(v, f"{prefix}{k}.", kept) for k, v in node.items()}
    if isinstance(node, list):
        return [_foreign_kept(v, f"{prefix}{i}.", kept) for i, v in enumerate(node)]
    if isinstance(node, str) and set(RESOLVER.findall(node)) - RUNNER_RESOLVERS:
        kept.append(prefix.rstrip("."))
        return node.replace("${", "\\${")
    return node


def _resolve_each(node, prefix: str, failed: list[str]) -> dict:
    """node as plain containers, resolving key by key so that one bad interpolation spoils only its
    own key (it keeps its text and is listed in `failed`)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    raw = OmegaConf.to_container(node, resolve=False)
    out = {}
    for k in raw:
        try:
            v = node[k]
            if isinstance(v, DictConfig):
                out[k] = _resolve_each(v, f"{prefix}{k}.", failed)
            else:
                out[k] = OmegaConf.to_container(v, resolve=True) if isinstance(v, ListConfig) else v
        except OmegaConfBaseException:
            out[k] = raw[k]
            failed.append(f"{prefix}{k}")
    return out
