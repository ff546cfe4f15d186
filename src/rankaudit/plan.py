"""What the workflow has to compute, derived from the validated config (no I/O, no torch).

The Snakefile asks this module which cells each model takes part in, which layers exist and which model's
chat template renders a family's chat format, so that the DAG is known at parse time without loading weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ORGANISM_PREFIX = "organism:"
FORMATS = ("raw", "chat")
SAMPLE_KEYS = ("safety", "control")
VARIANTS_PER_DATASET = {
    "safety": ("naive", "template", "aligned", "did", "base_format", "interaction"),
    "control": ("naive", "template", "aligned", "base_format", "interaction"),
}


class ConfigError(ValueError):
    """The one error type of a bad configuration: the dotted key at fault, what is wrong, and the config file(s).

    `rankaudit.config_checks.check_config` raises it at start-up with every problem found (`problems`, one line
    each); the helpers below raise single problems, which that check re-raises with the file names.
    """

    def __init__(self, key: str, message: str, files: Sequence[str] = ()) -> None:
        self.key = key
        self.message = message
        self.files = tuple(files)
        self.problems: tuple[ConfigError, ...] = (self,)
        super().__init__(self.line())

    def line(self) -> str:
        """`<files>: invalid config key '<key>': <message>`, the form every config error takes."""
        where = f"{', '.join(self.files)}: " if self.files else ""
        return f"{where}invalid config key '{self.key}': {self.message}"

    @classmethod
    def combine(cls, problems: Sequence[ConfigError], files: Sequence[str] = ()) -> ConfigError:
        """One error for several problems, each re-stated with `files`; its text is one line per problem."""
        restated = [cls(problem.key, problem.message, files) for problem in problems]
        error = cls(restated[0].key, restated[0].message, files)
        error.problems = tuple(restated)
        error.args = ("\n".join(problem.line() for problem in restated),)
        return error


def parse_organism(source: str) -> tuple[str, str] | None:
    """Return (family, role) for an `organism:<family>/<role>` source, else None."""
    if not source.startswith(ORGANISM_PREFIX):
        return None
    family, _, role = source[len(ORGANISM_PREFIX):].partition("/")
    if not family or not role or "/" in role:
        raise ConfigError("models", f"source {source!r} must look like 'organism:<family>/<role>'")
    return family, role


def organism_dir(family: str, role: str) -> str:
    """Where the workflow writes an organism (tokenizer + weights), loadable with AutoModelForCausalLM."""
    return f"resources/organisms/{family}/{role}"


def built_by_workflow(source: str) -> bool:
    """A relative source under resources/ is a model another rule writes (e.g. resources/abliterated/<family>)."""
    return source.startswith("resources/")


def model_location(config: Mapping[str, Any], model: str) -> str:
    """What to pass to `from_pretrained`: an organism directory, a local path or an HF id."""
    source = config["models"][model]["source"]
    organism = parse_organism(source)
    return organism_dir(*organism) if organism else source


def model_n_layers(config: Mapping[str, Any], model: str) -> int:
    """Number of decoder blocks L, known without loading the model."""
    entry = config["models"][model]
    if "n_layers" in entry:
        return int(entry["n_layers"])
    organism = parse_organism(entry["source"])
    if organism is not None:
        return organism_n_layers(config, organism[0])
    # a reference (a fine-tune or weight edit of an aligned model) has its aligned model's depth
    aligned = [family["aligned"] for family in config["families"].values()
               if model in family.get("references", []) and family["aligned"] != model]
    if aligned:
        return model_n_layers(config, aligned[0])
    raise ConfigError(f"models.{model}", "'n_layers' is required for a model that is neither an organism nor a "
                      "reference (its number of decoder blocks)")


def organism_n_layers(config: Mapping[str, Any], family: str) -> int:
    """Decoder blocks of an organism family, from the organisms section."""
    architectures = config.get("organisms", {}).get("architectures", {})
    if family not in architectures:
        raise ConfigError("organisms.architectures", f"no entry for organism family {family!r}")
    return int(architectures[family]["num_hidden_layers"])


def family_layers(config: Mapping[str, Any], family: str) -> list[int]:
    """Layer indices analysed for a family: 0 = embedding output, l >= 1 = output of block l-1."""
    n_layers = model_n_layers(config, config["families"][family]["aligned"])
    requested = config["capture"]["layers"]
    if requested == "all":
        return list(range(n_layers + 1))
    too_deep = [layer for layer in requested if layer > n_layers]
    if too_deep:
        raise ConfigError("capture.layers", f"{too_deep} exceed family {family!r}'s {n_layers} blocks (valid: 0..{n_layers})")
    return sorted(requested)


def template_model(config: Mapping[str, Any], family: str) -> str:
    """The model whose tokenizer renders this family's chat format (the aligned model unless overridden)."""
    entry = config["families"][family]
    return entry.get("template") or entry["aligned"]


def model_families(config: Mapping[str, Any], model: str) -> list[str]:
    """Families a model takes part in, as base, aligned or reference."""
    return [
        name for name, entry in config["families"].items()
        if model in (entry["base"], entry["aligned"], *entry.get("references", []))
    ]


def model_template(config: Mapping[str, Any], model: str) -> str:
    """The template model for a captured model (checked unique by `check_config`)."""
    return template_model(config, model_families(config, model)[0])


def model_layers(config: Mapping[str, Any], model: str) -> list[int]:
    """Union of the layers any of the model's families analyses."""
    layers: set[int] = set()
    for family in model_families(config, model):
        layers.update(family_layers(config, family))
    return sorted(layers)


def model_cells(config: Mapping[str, Any], model: str) -> list[tuple[str, str]]:
    """(format, dataset key) cells captured for a model.

    Base and aligned models need both formats on every dataset (the factorial design); references only enter
    through M^unsafe = U(chat) - B(chat), so they are captured under chat on the safety and control sets.
    """
    concepts = list(config["datasets"].get("concepts", []))
    roles = {
        role for family in model_families(config, model)
        for role in ("base", "aligned") if config["families"][family][role] == model
    }
    if roles:
        return [(fmt, key) for fmt in FORMATS for key in (*SAMPLE_KEYS, *concepts)]
    return [("chat", key) for key in SAMPLE_KEYS]


def captured_models(config: Mapping[str, Any]) -> list[str]:
    """Models that take part in at least one family, in config order."""
    return [model for model in config["models"] if model_families(config, model)]
