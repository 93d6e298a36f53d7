"""Run configuration: nested dataclasses, TOML in and out, command-line overrides.

Every field carries its documentation as a string literal right under it (the cleanrl
``Args`` style); :func:`field_docs` reads those literals from the source, so ``--help``
and the error messages quote them. A config is loaded from TOML (:func:`load_toml`,
unknown keys are errors with a did-you-mean), overridden from the command line
(:func:`apply_overrides`, ``--cycles 3`` or dotted ``--search.cycles 3``), checked
(:func:`validate`, errors name the field and its allowed range) and written back
(:func:`to_toml`, a small writer so no extra dependency is needed).

The defaults are the offline embedded run (``experiments/configs/default.toml``).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import math
import textwrap
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cem_nas.evaluate import EvalSettings
from cem_nas.repeats import READINGS
from cem_nas.scope import SCOPES
from cem_nas.sampler.hints import HintSettings
from cem_nas.sampler.lora import LoRASettings
from cem_nas.sampler.settings import DECODERS, ENGINES, GenerationSettings, WarmStartSettings
from cem_nas.sampler.model import DTYPES
from cem_nas.sampler.openai_engine import OpenAISettings


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the field and what is allowed."""


@dataclass
class RunSettings:
    name: str = "default"
    """Run name; the store is written to <runs_dir>/<name>/."""
    runs_dir: str = "runs"
    """Directory that holds the run directories."""
    seed: int = 0
    """Seed of the loop's random generator (proposals, replicate choice, baselines)."""
    overwrite: bool = False
    """Replace an existing run directory of the same name instead of refusing."""
    progress: bool = True
    """Show transient progress bars (warm start, generation, evaluation, update) and one summary line per cycle."""


@dataclass
class DataSettings:
    dataset: str = "mnist5k"
    """Dataset name (see cem_nas.data.names()): mnist5k, digits, cifar10, ..."""
    root: str = ""
    """Directory for downloaded datasets; empty = the data module's default."""
    max_train: int = 0
    """Training examples used by the proxy (a random subset), >= 0; 0 = all (the default,
    chosen by experiments.proxy_fidelity; evidence: docs/results.md#proxy-fidelity)."""
    max_test: int = 0
    """Test examples used to score the proxy; 0 = all."""
    resize: int = 0
    """Resize images to resize x resize pixels; 0 = keep the native size."""
    download: bool = True
    """Allow downloading datasets that are not on disk."""


@dataclass
class SearchSettings:
    cycles: int = 3
    """Number of CE cycles (sample, score, select, update)."""
    candidates: int = 12
    """Proposals sampled per cycle (N)."""
    elite_fraction: float = 0.25
    """Elite fraction rho: the top rho share of valid (status ok) scores are elites."""
    baselines: list[str] = field(default_factory=list)
    """Zoo baselines proposals edit; empty = every zoo architecture."""
    scope: str = "architecture"
    """What a proposal may change: architecture (the training recipe, i.e. supported_hyperparameters,
    train_setup and learn, is the proxy's and fixed: a proposal that changes it is out_of_scope, never
    trained, and the prompts say so) or file (anything in the model file)."""
    baseline_mode: str = "fixed"
    """fixed: always the zoo baselines; refine: the best candidates so far become the baselines."""
    refine_top: int = 3
    """In refine mode, how many of the best candidates so far serve as baselines."""
    refine_zoo: bool = True
    """In refine mode, the scored zoo baselines are in the pool the parents are chosen from (as
    born in cycle -1): the first parents are the best of the zoo, and a candidate becomes a
    parent by outscoring one. false: only candidates, and the whole zoo until one is scored."""
    refine_age: int = 0
    """In refine mode, a candidate is a parent for at most this many cycles after the one it
    was born in (the aging of regularized evolution, Real et al. 2019), so the parents keep
    changing and with them the files a single edit can reach; when fewer than refine_top are
    young enough, the best older ones fill the list. 0 = no aging: the best so far stay."""
    refine_per_family: int = 0
    """In refine mode, at most this many parents of one lineage (the zoo baseline its edits
    started from) while other lineages have candidates in the pool; 0 = no cap. Without it the
    parents can all be one family's variants a single edit apart, whose one-edit
    neighbourhood the model soon exhausts (niching, as in fitness sharing). Off by default: with
    the 0.5B it lowered the novel-valid yield. Evidence: docs/results.md#per-family"""
    replicate_candidates: int = 12
    """Scored candidates per cycle (chosen at random) that get extra proxy runs, for the SNR,
    >= 0 (an ICC interval of +-0.1 needs ~11 at the default proxy's ICC; evidence:
    docs/results.md#proxy-fidelity)."""
    replicate_seeds: int = 3
    """Proxy runs (seeds) per replicated candidate, counting the scoring run; 1 = no replicates."""
    novelty_threshold: float = 0.9
    """A candidate repeats an archived architecture (not trained) when its MinHash Jaccard to it is >= this."""
    redraw_repeats: bool = False
    """A proposal whose file repeats one the run has seen (the zoo or an earlier candidate, as
    the loop reads repeats), or another proposal's of the same generation batch, is drawn again
    like one that changes nothing, within the sampler's generation.redraw_unchanged rounds (the
    CE density truncated to unseen files); one still a repeat after the last round is a repeat
    as ``duplicates`` says. Only samplers that redraw (the LLM) act on it."""
    duplicates: str = "inherit"
    """What a repeat of an archived architecture is: inherit (the CE reading: it takes its twin's status and score
    and may be an elite) or reject (the reference pipeline's reading: status duplicate, never an elite, a miss)."""


@dataclass
class SamplerSettings:
    kind: str = "llm"
    """Sampling distribution: llm (LoRA-tuned code LLM), grammar (exact CEM control) or random (uniform over the
    grammar, never updated: random search at an equal budget)."""
    model: str = "qwen2.5-coder-0.5b"
    """LLM: an embedded model (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2: `python -m
    cem_nas.sampler.embedded list`), a Hugging Face hub id or a local checkpoint path."""
    mode: str = "delta"
    """LLM output: delta (unified diff against the baseline) or full (whole file)."""
    device: str = "auto"
    """Torch device for the LLM: auto, cpu, cuda, cuda:1, ..."""
    dtype: str = "auto"
    """LLM weights and compute: auto (bfloat16 on CUDA and on CPUs whose /proc/cpuinfo
    reports amx_bf16 or avx512_bf16, float32 elsewhere), float32 or bfloat16. The choice
    is printed and stored with the run (attribute sampler_dtype)."""
    engine: str = "hf"
    """Where proposals are generated: hf (transformers in this process) or openai (an
    OpenAI-compatible server, sampler.openai; the CE update stays in this process)."""
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    """The server of the openai engine and how each cycle's LoRA adapter reaches it."""
    load_in_4bit: bool = False
    """Load the LLM's base weights in 4 bit (bitsandbytes, CUDA only)."""
    grammar_alpha: float = 0.7
    """Grammar sampler: mixture smoothing step alpha of the exact CE update."""
    lora: LoRASettings = field(default_factory=LoRASettings)
    """LoRA adapter of the CE update."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    """Sampling settings of the LLM."""
    warm_start: WarmStartSettings = field(default_factory=WarmStartSettings)
    """Supervised warm start on the curated diff corpus before cycle 0."""
    hints: HintSettings = field(default_factory=HintSettings)
    """LLM: a kind of edit named in every prompt, drawn from a CE-updated distribution over kinds."""


@dataclass
class NoveltySettings:
    enabled: bool = True
    """Find near-repeats by MinHash Jaccard before evaluation (off: only exact repeats, after normalisation)."""
    num_perm: int = 128
    """MinHash permutations."""
    shingle: int = 7
    """Shingle length in tokens."""


@dataclass
class ExecutorSettings:
    kind: str = "local"
    """Where candidates are trained: local (sandbox worker pool) or dask (a Dask cluster)."""
    workers: int = 2
    """Local sandbox workers (parallel evaluations)."""
    scheduler: str = ""
    """Dask scheduler address (tcp://host:8786) for executor kind dask; empty or 'local' starts a local cluster of `workers` processes."""


@dataclass
class HookSettings:
    gamma_ref: float = math.nan
    """Reference threshold of the elite set E (score >= gamma_ref); nan = freeze the first cycle's gamma_t."""
    level: float = 0.95
    """Confidence level of every interval the instrumentation reports."""
    user: list[str] = field(default_factory=list)
    """Extra hooks by import path, 'package.module:Class' (constructed without arguments)."""
    tensorboard: bool = False
    """Write every cycle variable, the score histogram and the best delta of each cycle to
    <run dir>/tb for TensorBoard (needs the optional package: pip install 'cem-nas[tensorboard]')."""


@dataclass
class RunConfig:
    run: RunSettings = field(default_factory=RunSettings)
    """Run identity and seed."""
    data: DataSettings = field(default_factory=DataSettings)
    """The dataset the proxy trains on."""
    search: SearchSettings = field(default_factory=SearchSettings)
    """The cross-entropy method: cycles, candidates, elites, baselines, replicates."""
    proxy: EvalSettings = field(default_factory=EvalSettings)
    """The proxy score: short training in the sandbox."""
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    """The sampling distribution."""
    novelty: NoveltySettings = field(default_factory=NoveltySettings)
    """MinHash novelty filter."""
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    """Evaluation executor."""
    hooks: HookSettings = field(default_factory=HookSettings)
    """Instrumentation."""


#: Command-line shortcuts that name a section's main field by the section's name.
ALIASES = {"sampler": "sampler.kind", "executor": "executor.kind"}

#: Fields a resumed run may change; any other difference refuses the resume.
RESUMABLE_CHANGES = (
    "run.progress", "run.overwrite", "search.cycles", "executor.kind", "executor.workers",
    "executor.scheduler", "hooks.user",
    # where the serving engine runs, not what it samples
    "sampler.openai.url", "sampler.openai.api_key_env", "sampler.openai.timeout_s", "sampler.openai.parallel",
    "sampler.openai.adapter_dir",
)

# Allowed values and ranges, checked by validate(). (lo, hi, lo_open, hi_open); None = unbounded.
CHOICES = {
    "search.baseline_mode": ("fixed", "refine"),
    "search.scope": SCOPES,
    "search.duplicates": READINGS,
    "sampler.kind": ("llm", "grammar", "random"),
    "sampler.mode": ("delta", "full"),
    "sampler.dtype": DTYPES,
    "sampler.engine": ENGINES,
    "sampler.generation.decoder": DECODERS,
    "executor.kind": ("local", "dask"),
}
RANGES = {
    "search.cycles": (1, None, False, False),
    "search.candidates": (1, None, False, False),
    "search.elite_fraction": (0.0, 1.0, True, False),
    "search.refine_top": (1, None, False, False),
    "search.refine_age": (0, None, False, False),
    "search.refine_per_family": (0, None, False, False),
    "search.replicate_candidates": (0, None, False, False),
    "search.replicate_seeds": (1, None, False, False),
    "search.novelty_threshold": (0.0, 1.0, True, False),
    "novelty.num_perm": (16, None, False, False),
    "novelty.shingle": (1, None, False, False),
    "executor.workers": (1, None, False, False),
    "data.max_train": (0, None, False, False),
    "data.max_test": (0, None, False, False),
    "data.resize": (0, None, False, False),
    "sampler.grammar_alpha": (0.0, 1.0, True, False),
    "hooks.level": (0.0, 1.0, True, True),
    "proxy.epochs": (1, None, False, False),
    "proxy.batch_size": (1, None, False, False),
}


# ---------------------------------------------------------------- field introspection

@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings of a dataclass's fields: the string literal right under each field."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)).body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def leaves(cls: type = RunConfig, prefix: str = "") -> dict[str, tuple[type, Any, str]]:
    """Every scalar/list field of a config tree: dotted path -> (type, default, doc)."""
    out = {}
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        path = prefix + f.name
        if dataclasses.is_dataclass(tp):
            out.update(leaves(tp, path + "."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[path] = (tp, default, docs.get(f.name, ""))
    return out


def get(cfg: Any, path: str) -> Any:
    """The value at a dotted path."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, name, value)


# ---------------------------------------------------------------- value conversion

def _coerce(path: str, tp: Any, value: Any) -> Any:
    """Check a TOML value against the field type (ints are accepted for floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(path, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(f"{path}[{i}]", item, v) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool) or tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def parse_cli_value(path: str, tp: Any, text: str) -> Any:
    """A command-line string as a value of the field's type.

    >>> parse_cli_value("search.baselines", list[str], "a,b")
    ['a', 'b']
    >>> parse_cli_value("run.progress", bool, "no")
    False
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "") and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        items = [parse_cli_value(path, args[0] if args else str, p) for p in parts]
        return items if origin is list else tuple(items)
    if tp is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{path}: expected true/false, got {text!r}")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"{path}: expected {tp.__name__}, got {text!r}") from None
    return text


# ---------------------------------------------------------------- TOML in

def from_dict(data: dict, cls: type = RunConfig, prefix: str = "") -> Any:
    """Build a config from nested dicts; missing keys keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else f"; known keys: {sorted(names)}"
        raise ConfigError(f"unknown config key {prefix + key!r}{hint}")
    kwargs = {}
    for name, value in data.items():
        tp = _hints(cls)[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix + name}: expected a [{prefix + name}] table, got {value!r}")
            kwargs[name] = from_dict(value, tp, prefix + name + ".")
        else:
            kwargs[name] = _coerce(prefix + name, tp, value)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a settings class's own __post_init__ check
        raise ConfigError(f"[{prefix.rstrip('.') or 'top level'}] {e}") from None


#: Fields added after runs were stored, with the value that reproduces what a stored run did
#: without them: a run's saved config that lacks one resumes with this value, not the new default.
SAVED_RUN_DEFAULTS = {"search.scope": "file"}


def load_toml(path: str | Path, saved_run: bool = False) -> RunConfig:
    """Read a config file (unknown keys and wrong types are errors), validated.

    ``saved_run``: the file is a run's resolved config (``runs/NAME/config.toml``), so a
    field it lacks takes its :data:`SAVED_RUN_DEFAULTS` value when it has one.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    if saved_run:
        for dotted, value in SAVED_RUN_DEFAULTS.items():
            *sections, name = dotted.split(".")
            table = data
            for section in sections:
                table = table.setdefault(section, {})
            table.setdefault(name, value)
    try:
        cfg = from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    validate(cfg)
    return cfg


# ---------------------------------------------------------------- TOML out

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def to_toml(cfg: Any, header: str = "") -> str:
    """The config as TOML text that :func:`load_toml` reads back to an equal config.

    Fields whose value is None are left out (TOML has no null); they load as their
    default, which is None for every such field of :class:`RunConfig`.
    """
    lines = [f"# {line}" for line in header.splitlines()]

    def table(obj: Any, name: str) -> None:
        scalars, subtables = [], []
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                subtables.append((f.name, value))
            elif value is not None:
                doc = docs.get(f.name)
                if doc:
                    scalars.append(f"# {doc}")
                scalars.append(f"{f.name} = {_toml_value(value)}")
        if scalars:
            if name:
                lines.extend(["", f"[{name}]"])
            lines.extend(scalars)
        for sub, value in subtables:
            table(value, f"{name}.{sub}" if name else sub)

    table(cfg, "")
    return "\n".join(lines).lstrip("\n") + "\n"


# ---------------------------------------------------------------- validation

def validate(cfg: RunConfig) -> RunConfig:
    """Check choices and ranges; raise ConfigError naming the field and what is allowed."""
    for path, allowed in CHOICES.items():
        value = get(cfg, path)
        if value not in allowed:
            raise ConfigError(f"{path} = {value!r} is not allowed; choose one of {', '.join(allowed)}")
    for path, (lo, hi, lo_open, hi_open) in RANGES.items():
        try:
            value = get(cfg, path)
        except AttributeError:
            continue  # a field another module's settings class does not have
        bad = (isinstance(value, float) and math.isnan(value)
               or lo is not None and (value <= lo if lo_open else value < lo)
               or hi is not None and (value >= hi if hi_open else value > hi))
        if bad:
            left = ("(" if lo_open else "[") + ("-inf" if lo is None else str(lo))
            right = ("inf" if hi is None else str(hi)) + (")" if hi_open or hi is None else "]")
            raise ConfigError(f"{path} = {value!r} is out of range; allowed {left}, {right}")
    _recheck(cfg, "")
    for spec in cfg.hooks.user:
        if ":" not in spec:
            raise ConfigError(f"hooks.user entry {spec!r} must look like 'package.module:Class'")
    if not cfg.run.name or "/" in cfg.run.name:
        raise ConfigError(f"run.name = {cfg.run.name!r}; give a non-empty name without '/'")
    return cfg


def _recheck(obj: Any, path: str) -> None:
    """Re-run the __post_init__ checks of the settings classes (overrides bypass them)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _recheck(value, f"{path}{f.name}.")
    if hasattr(obj, "__post_init__"):
        try:
            dataclasses.replace(obj)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[{path.rstrip('.')}] {e}") from None


# ---------------------------------------------------------------- command line

def _flag_names(cls: type = RunConfig) -> dict[str, str]:
    """Option name (without --) -> dotted path: every full path, plus every dotted suffix
    of a path (``rank``, ``lora.rank``) that names one field only."""
    paths = list(leaves(cls))
    owners: dict[str, set[str]] = {}
    for p in paths:
        parts = p.split(".")
        for i in range(len(parts)):
            owners.setdefault(".".join(parts[i:]), set()).add(p)
    names = {p: p for p in paths}
    for suffix, found in owners.items():
        if len(found) == 1 and suffix not in ALIASES:
            names.setdefault(suffix, next(iter(found)))
    names.update(ALIASES)
    return names


def add_arguments(parser: Any, cls: type = RunConfig) -> None:
    """Add one option per config field to an argparse parser, grouped by section; the
    help text is the field's docstring."""
    import argparse

    by_path: dict[str, list[str]] = {}
    for name, path in _flag_names(cls).items():
        by_path.setdefault(path, []).append(name)
    section_docs = field_docs(cls)
    groups: dict[str, Any] = {}
    for path, (tp, default, doc) in leaves(cls).items():
        section = path.split(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"[{section}]", section_docs.get(section))
        flags = []
        for name in sorted(by_path[path], key=lambda n: (n.count("."), len(n))):
            flags.append("--" + name.replace("_", "-"))
            if "_" in name:
                flags.append("--" + name)
        shown = default if not isinstance(default, str) else repr(default)
        groups[section].add_argument(*flags, dest="cfg:" + path, default=argparse.SUPPRESS, metavar="V",
                                     help=f"{doc} (default {shown})".replace("%", "%%"))


def overrides_from_args(namespace: Any) -> dict[str, str]:
    """The config overrides an argparse namespace holds, as dotted path -> raw string."""
    return {k[4:]: v for k, v in vars(namespace).items() if k.startswith("cfg:")}


def apply_overrides(cfg: RunConfig, overrides: dict[str, str]) -> RunConfig:
    """Set fields from command-line strings (dotted paths) and validate the result."""
    known = leaves(type(cfg))
    for path, text in overrides.items():
        if path not in known:
            close = difflib.get_close_matches(path, known, n=1)
            raise ConfigError(f"unknown field {path!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        _set(cfg, path, parse_cli_value(path, known[path][0], text))
    return validate(cfg)


def differences(a: RunConfig, b: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two configs: path -> (a value, b value)."""
    out = {}
    for path in leaves(type(a)):
        va, vb = get(a, path), get(b, path)
        same = va == vb or (isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb))
        if not same:
            out[path] = (va, vb)
    return out
