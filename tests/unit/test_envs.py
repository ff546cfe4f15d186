"""The conda environments (envs/*.yaml) and the container agree with pyproject.toml, and every rule's job finds
what its script imports in the environment the rule declares.

A version range in an env file must lie inside pyproject's range for that package (so whatever conda picks also
satisfies `pip install -e .`); a package pyproject does not declare is an error. The import check follows every
import (module level and inside functions) of each workflow script through the rankaudit modules it reaches.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
ENVS = {path.stem: path for path in sorted((ROOT / "envs").glob("*.yaml"))}
# conda-forge names that differ from the PyPI distribution pyproject names
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
# import names that differ from the distribution name
IMPORT_TO_DIST = {"yaml": "pyyaml"}
# a conda spec clause: an operator and a version
CLAUSE = re.compile(r"^(>=|<=|==|>|<)\s*([0-9][0-9a-zA-Z.]*)$")
RULE_HEADER = re.compile(r"^[ ]*rule\b[^:\n]*:[ ]*$", re.M)
RULE_CONDA = re.compile(r'^[ ]+conda:\n[ ]+"\.\./envs/(\w+)\.yaml"', re.M)
RULE_SCRIPT = re.compile(r'^[ ]+script:\n[ ]+"\.\./workflow_scripts/(\w+)\.py"', re.M)


def pyproject_specs() -> dict[str, SpecifierSet]:
    """Distribution name -> version range, from [project] dependencies, optional dependencies and requires-python."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    specs = {}
    for requirement in map(Requirement, requirements):
        specs[requirement.name.lower()] = requirement.specifier
    specs["python"] = SpecifierSet(project["requires-python"])
    return specs


def env_specs(path: Path) -> dict[str, SpecifierSet]:
    """Distribution name (PyPI spelling) -> version range of one env file, conda and pip entries alike."""
    specs = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        if isinstance(entry, dict):
            for requirement in map(Requirement, entry["pip"]):
                specs[requirement.name.lower()] = requirement.specifier
            continue
        name, _, spec = entry.partition(" ")
        if name == "pip":
            continue
        clauses = [clause.strip() for clause in spec.split(",") if clause.strip()]
        bad = [clause for clause in clauses if not CLAUSE.match(clause)]
        assert not bad, f"{path.name}: '{entry}': use only >=, <, <=, >, == clauses (the drift check reads those)"
        specs[CONDA_TO_PYPI.get(name, name).lower()] = SpecifierSet(",".join(clauses))
    return specs


def interval(spec: SpecifierSet) -> tuple[Version | None, bool, Version | None, bool]:
    """(lower, lower included, upper, upper included) of a range made of >=, >, <, <=, == clauses."""
    lower, lower_in, upper, upper_in = None, True, None, True
    for clause in spec:
        version = Version(clause.version)
        if clause.operator in (">=", ">", "==") and (lower is None or version > lower or (version == lower and clause.operator == ">")):
            lower, lower_in = version, clause.operator != ">"
        if clause.operator in ("<=", "<", "==") and (upper is None or version < upper or (version == upper and clause.operator == "<")):
            upper, upper_in = version, clause.operator != "<"
    return lower, lower_in, upper, upper_in


def within(inner: SpecifierSet, outer: SpecifierSet) -> bool:
    """Whether every version `inner` admits is admitted by `outer` (both made of comparison clauses)."""
    lo, lo_in, hi, hi_in = interval(inner)
    outer_lo, outer_lo_in, outer_hi, outer_hi_in = interval(outer)
    if outer_lo is not None and (lo is None or lo < outer_lo or (lo == outer_lo and lo_in and not outer_lo_in)):
        return False
    if outer_hi is not None and (hi is None or hi > outer_hi or (hi == outer_hi and hi_in and not outer_hi_in)):
        return False
    return True


def test_within_reads_ranges_as_intervals():
    assert within(SpecifierSet(">=2.4,<2.15"), SpecifierSet(">=2.4,<2.15"))
    assert within(SpecifierSet("==2.13.0"), SpecifierSet(">=2.4,<2.15"))
    assert not within(SpecifierSet(">=2.4"), SpecifierSet(">=2.4,<2.15"))  # no upper bound where pyproject has one
    assert not within(SpecifierSet(">=2.0,<2.15"), SpecifierSet(">=2.4,<2.15"))
    assert not within(SpecifierSet(">=2.4,<=2.15"), SpecifierSet(">=2.4,<2.15"))
    assert within(SpecifierSet(">=1.30,<3"), SpecifierSet(">=1.26"))


def test_both_environments_exist():
    assert set(ENVS) == {"analysis", "model"}


@pytest.mark.parametrize("env", sorted(ENVS))
def test_env_ranges_lie_within_pyproject(env):
    declared = pyproject_specs()
    problems = []
    for name, spec in env_specs(ENVS[env]).items():
        if name not in declared:
            problems.append(f"{name}: not a dependency in pyproject.toml")
        elif not within(spec, declared[name]):
            problems.append(f"{name}: '{spec}' admits versions outside pyproject's '{declared[name]}'")
    assert not problems, f"envs/{env}.yaml drifted from pyproject.toml:\n" + "\n".join(problems)


def test_analysis_env_has_no_torch():
    assert not {"torch", "transformers", "accelerate"} & set(env_specs(ENVS["analysis"]))


def test_container_torch_and_python_lie_within_pyproject():
    dockerfile = (ROOT / "Dockerfile").read_text()
    declared = pyproject_specs()
    torch_spec = Requirement(re.search(r"^ARG TORCH_SPEC=(\S+)$", dockerfile, re.M).group(1))
    assert within(torch_spec.specifier, declared["torch"]), f"Dockerfile {torch_spec} vs pyproject torch{declared['torch']}"
    python = re.search(r"^FROM python:(\d+\.\d+)", dockerfile, re.M).group(1)
    assert Version(python) in declared["python"]


def rule_environments() -> dict[str, set[str]]:
    """Workflow script -> the envs of the rules that run it, read from the rule blocks of rules/*.smk."""
    by_script: dict[str, set[str]] = {}
    problems = []
    for path in sorted((ROOT / "rules").glob("*.smk")):
        text = path.read_text()
        starts = [match.start() for match in RULE_HEADER.finditer(text)]
        for start, end in zip(starts, [*starts[1:], len(text)]):
            block = text[start:end]
            script, conda = RULE_SCRIPT.search(block), RULE_CONDA.search(block)
            if script and not conda:
                problems.append(f"{path.name}: the rule at '{block.splitlines()[0].strip()}' runs {script[1]}.py without conda:")
            elif script:
                by_script.setdefault(script[1], set()).add(conda[1])
    assert not problems, "\n".join(problems)
    return by_script


def module_file(module: str) -> Path | None:
    path = ROOT / "src" / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything `path` imports, inside functions too (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = path.parent.relative_to(ROOT / "src").parts
                package = package[: len(package) - node.level + 1]
                module = ".".join([*package, *([module] if module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def third_party_imports(script: Path) -> set[str]:
    """Top-level third-party packages `script` can reach through rankaudit (an over-approximation: whole modules)."""
    seen, third_party, todo = set(), set(), [script]
    while todo:
        for name in imported_modules(todo.pop()):
            top = name.split(".")[0]
            if top != "rankaudit":
                if top not in sys.stdlib_module_names and top != "snakemake":
                    third_party.add(IMPORT_TO_DIST.get(top, top).lower())
                continue
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                path = module_file(".".join(parts[:end]))
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return third_party


def test_every_script_finds_its_imports_in_its_rules_env():
    environments = rule_environments()
    scripts = {path.stem for path in (ROOT / "workflow_scripts").glob("*.py")}
    assert set(environments) == scripts, f"scripts no rule runs or rules without an env: {set(environments) ^ scripts}"
    packages = {env: set(env_specs(path)) for env, path in ENVS.items()}
    missing = {
        f"{script} ({env})": sorted(third_party_imports(ROOT / "workflow_scripts" / f"{script}.py") - packages[env])
        for script, envs in environments.items()
        for env in envs
    }
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, f"packages a script imports but its rule's conda env lacks: {missing}"


def test_import_closure_sees_function_level_imports():
    # capture_activations imports no torch at module level; the closure must still find it (rankaudit.capture)
    assert "torch" in third_party_imports(ROOT / "workflow_scripts" / "capture_activations.py")
    assert "torch" not in third_party_imports(ROOT / "workflow_scripts" / "layer_spectra.py")


def test_jobs_in_conda_envs_import_rankaudit_from_snakemakes_search_path():
    """The envs do not install rankaudit: Snakemake appends its own process's search path to every script job,
    and that path holds the rankaudit the rule files import (docs/CLUSTER.md, "Software deployment")."""
    from snakemake.common import get_snakemake_searchpaths

    import rankaudit

    package_parent = str(Path(rankaudit.__file__).resolve().parent.parent)
    assert package_parent in {str(Path(path).resolve()) for path in get_snakemake_searchpaths()}
