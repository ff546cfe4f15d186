"""Cross-key config checks (rankaudit.config_checks): each bad config is refused with its dotted key, the good
one beside it passes, and every problem of a config is reported at once, naming the file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from rankaudit.config_checks import CONCEPT_PAIR_SETS, ConfigError, check_config, dataset_splits
from rankaudit.prompts.build import GENERATED_SET_KEYS, generate_set
from rankaudit.prompts.tables import is_paired

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "config" / "schema"
FILE = "configs/bad.yaml"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def validated(config: dict) -> dict:
    """What rules/common.smk's validate_config leaves: every section checked and its defaults filled."""
    config = copy.deepcopy(config)
    validate(config, str(SCHEMAS / "config.schema.yaml"))
    for section in ("limits", "calibration"):
        config.setdefault(section, {})
    for section in config:
        if (SCHEMAS / f"{section}.schema.yaml").exists():
            validate(config[section], str(SCHEMAS / f"{section}.schema.yaml"))
    for entry in (config.get("checkpoints") or {}).values():
        if (entry.get("derive") or {}).get("kind") == "refusal_tuned":
            validate(entry["derive"], str(SCHEMAS / "refusal_tuned.schema.yaml"))
    return config


DEMO = validated(load("config.yaml"))
PAPER = validated(load("paper.yaml"))
REAL_SMALL = validated(load("real_small.yaml"))


def problems(config: dict) -> dict[str, str]:
    """{dotted key: message} of every problem check_config finds ({} when it passes)."""
    try:
        check_config(config, [FILE])
    except ConfigError as error:
        keys = [problem.key for problem in error.problems]
        assert len(keys) == len(set(keys)), f"one problem per key: {keys}"
        return {problem.key: problem.message for problem in error.problems}
    return {}


def changed(config: dict, change) -> dict:
    config = copy.deepcopy(config)
    change(config)
    return config


@pytest.mark.parametrize("name, config", [("config.yaml", DEMO), ("paper.yaml", PAPER), ("real_small.yaml", REAL_SMALL)])
def test_the_shipped_configs_pass(name, config):
    check_config(config, [name])


def test_every_problem_is_one_line_naming_the_file_and_the_dotted_key():
    def two_faults(c):
        c["families"]["llama"]["aligned"] = "llama_instruct"
        c["causal"]["families"].append("mistral")

    with pytest.raises(ConfigError) as raised:
        check_config(changed(DEMO, two_faults), [FILE, "extra.yaml"])
    error = raised.value
    assert [problem.key for problem in error.problems] == ["families.llama.aligned", "causal.families"]
    assert error.key == "families.llama.aligned" and error.files == (FILE, "extra.yaml")
    lines = str(error).splitlines()
    assert lines[0].startswith(f"{FILE}, extra.yaml: invalid config key 'families.llama.aligned': unknown model 'llama_instruct'")
    assert lines[1].startswith(f"{FILE}, extra.yaml: invalid config key 'causal.families': unknown family ['mistral']")
    assert len(lines) == 2


# --- the new start-up checks, each beside a passing neighbour ------------------------------------------------------

def test_unknown_causal_families_are_refused():
    assert problems(changed(DEMO, lambda c: c["causal"]["families"].append("mistral"))) == {
        "causal.families": f"unknown family ['mistral'] (known: {sorted(DEMO['families'])})"}
    assert problems(changed(DEMO, lambda c: c["causal"].update(families=["llama_planted"]))) == {}


@pytest.mark.parametrize("key", ["selection.safety_dataset", "selection.control_dataset", "evaluation.safety_dataset",
                                 "evaluation.control_dataset"])
def test_unknown_causal_datasets_are_refused(key):
    phase, field = key.split(".")
    found = problems(changed(DEMO, lambda c: c["causal"][phase].update({field: "demo_harmfull"})))
    assert list(found) == [f"causal.{key}"] and found[f"causal.{key}"].startswith("unknown prompt dataset 'demo_harmfull'")
    good = "demo_harmful" if "safety" in field else "demo_benign"
    assert problems(changed(DEMO, lambda c: c["causal"][phase].update({field: good}))) == {}


def test_a_headline_band_or_k_outside_the_grids_is_refused():
    found = problems(changed(DEMO, lambda c: c["causal"]["ordering"].update(headline_band="medium", headline_k=4)))
    assert found == {"causal.ordering.headline_band": "'medium' is not a band of causal.bands ['narrow', 'wide']",
                     "causal.ordering.headline_k": "4 is not in causal.k_grid [1, 3, 5, 10, 20, 50]"}
    assert problems(changed(DEMO, lambda c: c["causal"]["ordering"].update(headline_band="wide", headline_k=5))) == {}


def test_unpaired_concept_sets_are_refused():
    found = problems(changed(DEMO, lambda c: c["datasets"].update(concepts=["concept_en_fr", "demo_benign"])))
    assert list(found) == ["datasets.concepts"] and found["datasets.concepts"].startswith("['demo_benign'] are not concept-pair sets")
    public = changed(PAPER, lambda c: c["datasets"].update(concepts=["advbench"]))
    assert "['advbench'] are not concept-pair sets" in problems(public)["datasets.concepts"]
    assert problems(changed(DEMO, lambda c: c["datasets"].update(concepts=["concept_question_statement"]))) == {}


def test_the_concept_pair_sets_are_exactly_the_generated_sets_written_in_pairs():
    settings = {"seed": 0, "n_harmful": 8, "n_benign": 8, "split_fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
                "n_translation_pairs": 3, "n_question_statement_pairs": 3}
    paired = {name for name in GENERATED_SET_KEYS if is_paired(generate_set(name, settings)[0])}
    assert paired == set(CONCEPT_PAIR_SETS)


def test_splits_are_known_from_the_config():
    assert dataset_splits(PAPER, "harmful_val") == {"val"}
    assert dataset_splits(PAPER, "advbench") == {"all"}
    assert dataset_splits(DEMO, "demo_harmful") == {"train", "val", "test"}
    assert dataset_splits(DEMO, "concept_en_fr") == {"all"}
    no_val = changed(DEMO, lambda c: c["prompts"]["generated"].update(split_fractions={"train": 0.8, "val": 0, "test": 0.2}))
    assert dataset_splits(no_val, "demo_benign") == {"train", "test"}


def test_a_public_set_without_the_split_a_stage_asks_for_is_refused():
    audit = problems(changed(PAPER, lambda c: c["datasets"]["safety"].update(dataset="advbench")))
    assert audit == {"datasets.safety.split": "split 'train' is not in prompt set 'advbench' (datasets.safety.dataset), "
                                              "whose rows have split(s) ['all'] (set by prompts.public.advbench.split)"}
    causal = problems(changed(PAPER, lambda c: c["causal"]["selection"].update(control_dataset="harmless_test")))
    assert list(causal) == ["causal.selection.split"]
    assert "'val' is not in prompt set 'harmless_test' (causal.selection.control_dataset)" in causal["causal.selection.split"]
    # a phase without its own set draws from the audit's: harmful_train has no test split
    fallback = problems(changed(PAPER, lambda c: c["causal"]["evaluation"].update(safety_dataset=None)))
    assert "'test' is not in prompt set 'harmful_train' (datasets.safety.dataset)" in fallback["causal.evaluation.split"]
    tuned = problems(changed(REAL_SMALL, lambda c: c["checkpoints"]["smollm2_refusal"]["derive"].update(eval_harmful_dataset="harmful_val")))
    assert "split 'test' is not in prompt set 'harmful_val'" in tuned["checkpoints.smollm2_refusal.derive.eval_harmful_dataset"]
    assert problems(changed(PAPER, lambda c: c["datasets"]["safety"].update(dataset="advbench", split=None))) == {}


def test_a_generated_split_with_no_share_is_refused_where_it_is_asked_for():
    no_val = changed(DEMO, lambda c: c["prompts"]["generated"].update(split_fractions={"train": 0.8, "val": 0, "test": 0.2}))
    found = problems(no_val)
    assert list(found) == ["causal.selection.split"]
    # both roles of the phase fail: one line for the key, both sets named
    assert found["causal.selection.split"].startswith("split 'val' is not in prompt set 'demo_harmful' (datasets.safety.dataset)")
    assert "; split 'val' is not in prompt set 'demo_benign' (datasets.control.dataset)" in found["causal.selection.split"]
    uneven = problems(changed(DEMO, lambda c: c["prompts"]["generated"].update(split_fractions={"train": 0.8, "val": 0.3, "test": 0.2})))
    assert uneven == {"prompts.generated.split_fractions": "{'train': 0.8, 'val': 0.3, 'test': 0.2} sum to 1.3, not 1"}


def test_a_family_whose_base_is_its_aligned_model_is_refused():
    same = problems(changed(DEMO, lambda c: c["families"]["qwen2"].update(aligned="qwen2_base")))
    assert same == {"families.qwen2.aligned": "is the base model too ('qwen2_base'): a family compares two different models"}

    def twin(c):
        c["models"]["qwen2_twin"] = dict(c["models"]["qwen2_base"])
        c["families"]["qwen2"]["aligned"] = "qwen2_twin"
        c["causal"]["families"].remove("qwen2")

    assert list(problems(changed(DEMO, twin))) == ["families.qwen2.aligned"]
    # the same checkpoint in another dtype is a different model (real_small's float32 base)
    assert REAL_SMALL["models"]["smollm2_instruct_f32"]["source"] == REAL_SMALL["models"]["smollm2_instruct"]["source"]


@pytest.mark.parametrize("revision, refused", [(None, True), ("main", True), (COMMIT[:12], True), (COMMIT.upper(), True),
                                               (COMMIT, False)])
def test_remote_code_needs_a_pinned_revision(revision, refused):
    config = changed(PAPER, lambda c: c["models"]["llama_aligned"].update(trust_remote_code=True, revision=revision))
    found = problems(config)
    assert ("models.llama_aligned.trust_remote_code" in found) is refused
    if refused:
        assert found["models.llama_aligned.trust_remote_code"].startswith(
            f"is true for the Hub model 'meta-llama/Llama-3.1-8B-Instruct' but models.llama_aligned.revision is {revision!r}")


def test_remote_code_of_a_local_directory_needs_no_revision():
    local = changed(REAL_SMALL, lambda c: c["models"]["smollm2_refusal"].update(trust_remote_code=True))
    assert problems(local) == {}


# --- the checks that moved here from the rule files and the jobs ----------------------------------------------------

@pytest.mark.parametrize("change, key, message", [
    (lambda c: c["families"]["llama"].update(aligned="llama_instruct"), "families.llama.aligned", "unknown model 'llama_instruct'"),
    (lambda c: c["families"]["llama"]["references"].append("nobody"), "families.llama.references", "unknown model 'nobody'"),
    (lambda c: c["models"]["llama_base"].update(source="organism:llama"), "models.llama_base.source", "source 'organism:llama' must look like"),
    (lambda c: c["models"]["llama_base"].update(source="organism:mistral/base"), "models.llama_base.source", "organism family 'mistral' is not in"),
    (lambda c: c["datasets"]["safety"].update(dataset="harmful_trian"), "datasets.safety.dataset", "unknown prompt dataset 'harmful_trian'"),
    (lambda c: c["datasets"]["concepts"].append("concept_de"), "datasets.concepts", "unknown prompt dataset 'concept_de'"),
    (lambda c: c.update(stages=["audit", "causal"]) or c["causal"].update(families=[]), "stages", "'causal' is chosen but causal.families is empty"),
    (lambda c: c["capture"].update(layers=[0, 99]), "capture.layers", "[99] exceed family"),
    (lambda c: c["families"]["llama_planted"].update(template="llama_planted"), "models.llama_base",
     "takes part in families rendered with different chat templates"),
    (lambda c: c["limits"].update(headline_eps=0.3), "limits.headline_eps", "0.3 is not one of limits.eps"),
    (lambda c: c["calibration"]["tables"].update(report_r=[30]), "calibration.tables.report_r", "[30] are not in calibration.measurement.r_grid"),
    (lambda c: c["causal"]["bands"]["narrow"].update(range=[0.7, 0.45]), "causal.bands.narrow.range", "the low end exceeds the high end"),
    (lambda c: c["prompts"]["public"].update(demo_benign={}), "prompts.public", "['demo_benign'] reuse the name of a project-written prompt set"),
], ids=["family model", "reference", "organism form", "organism family", "dataset", "concept dataset", "causal stage",
        "layers", "templates", "limits eps", "calibration r", "band range", "public name clash"])
def test_moved_checks_name_their_key(change, key, message):
    found = problems(changed(DEMO, change))
    assert key in found and message in found[key], found


def test_an_hf_model_needs_its_depth():
    found = problems(changed(DEMO, lambda c: c["models"].update(llama_base={"source": "meta-llama/Llama-3.1-8B"})))
    assert found["models.llama_base"].startswith("'n_layers' is required")


def test_causal_band_layers_must_be_captured():
    # llama has 4 blocks: the wide band [0.30, 0.85] x 8 is layers 1..3; capture only 0 and 3
    found = problems(changed(DEMO, lambda c: c["capture"].update(layers=[0, 3])))
    assert found["causal.bands.wide"] == ("layers [1, 2] of family 'llama' (4 blocks), [1, 2] of family 'gemma2' (4 blocks), "
                                         "[1, 2] of family 'qwen2' (4 blocks) are not captured; capture.layers must include them")
    assert set(found) == {"causal.bands.narrow", "causal.bands.wide"}
    assert problems(changed(DEMO, lambda c: c["capture"].update(layers=[0, 1, 2, 3]))) == {}


def test_checkpoint_derivations_and_sources_resolve():
    def broken(c):
        planted = c["checkpoints"]["smollm2_planted"]["derive"]
        c["checkpoints"]["a"] = {"derive": {**planted, "from": "b"}}
        c["checkpoints"]["b"] = {"derive": {**planted, "from": "a"}}
        c["checkpoints"]["c"] = {"derive": {**planted, "from": "nope"}}
        c["models"]["smollm2_planted"]["source"] = "resources/checkpoints/missing"

    found = problems(changed(REAL_SMALL, broken))
    assert found["checkpoints.a.derive.from"] == "derivation cycle a -> b -> a"
    assert found["checkpoints.c.derive.from"].startswith("unknown checkpoint 'nope'")
    assert found["models.smollm2_planted.source"].startswith("'resources/checkpoints/missing' is not written by any checkpoints entry")
