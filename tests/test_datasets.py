"""The benchmark data ships with the package: named datasets, splits, the CLI's --dataset, GPQA from a file."""

import json

import pytest
from click.testing import CliRunner

from conftest import raw_items
from symoe import load_questions
from symoe.cli import main as cli
from symoe.errors import SymoeError
from symoe.method.datasets import DATASETS, dataset_path

SIZES = {("mmlu_pro", "test"): 2100, ("mmlu_pro", "validation"): 350, ("medmcqa", "test"): 4183,
         ("medmcqa", "validation"): 504, ("aime24", "test"): 30, ("aime24", "validation"): 354}


@pytest.mark.parametrize("name,split", sorted(SIZES))
def test_named_datasets_are_the_authors_files(name, split):
    qs = load_questions(name, split=split)
    stem = f"{DATASETS[name]}_{'train' if split == 'validation' else 'test'}"
    raw = raw_items(stem + ".json")
    assert len(qs) == SIZES[name, split] == len(raw)
    # Same texts, golds and ids as reading the authors' file by path (ids keep the authors' file stem).
    assert [(q.text, q.gold) for q in qs] == [(it["question"], it["gold_answer"].strip()) for it in raw]
    assert qs[0].id == f"{stem}-0"
    assert {q.kind for q in qs} == {"number" if name == "aime24" else "letter"}


def test_a_path_still_works_and_gz_is_read(tmp_path):
    f = tmp_path / "MMLU_Pro_mine.json"
    f.write_text(json.dumps(raw_items("MMLU_Pro_test.json")[:3]))
    assert [q.text for q in load_questions(f)] == [q.text for q in load_questions("mmlu_pro", limit=3)]
    assert load_questions(dataset_path("aime24"))[0].kind == "number"


def test_unknown_names_are_refused_by_name():
    with pytest.raises(SymoeError, match="unknown dataset 'gpqa'.*mmlu_pro, medmcqa, aime24"):
        dataset_path("gpqa")
    with pytest.raises(SymoeError, match="unknown split 'train'.*test, validation"):
        load_questions("mmlu_pro", split="train")  # type: ignore[arg-type]
    with pytest.raises(SymoeError, match="split='validation' is for a bundled dataset.*holds one split"):
        load_questions(dataset_path("aime24"), split="validation")


def test_profiling_stages_default_to_the_validation_split():
    """`symoe profile --dataset mmlu_pro` profiles on the validation split unless told otherwise;
    `symoe run --dataset mmlu_pro` runs the test split."""
    import click

    from symoe.cli import stages
    from symoe.cli.common import questions_opt, validation_questions_opt

    def probe(opt):
        return click.command()(opt(lambda questions_path: click.echo(questions_path)))

    for opt, split in ((validation_questions_opt, "validation"), (questions_opt, "test")):
        r = CliRunner().invoke(probe(opt), ["--dataset", "mmlu_pro"])
        assert r.output.strip() == str(dataset_path("mmlu_pro", split))
        r = CliRunner().invoke(probe(opt), ["--dataset", "mmlu_pro", "--split", "test"])
        assert r.output.strip() == str(dataset_path("mmlu_pro", "test"))
    for cmd, split in ((stages.profile_cmd, "validation"), (stages.select_aggregator_cmd, "validation"),
                       (stages.keywords_cmd, "test")):
        assert f"[default: {split}]" in " ".join(CliRunner().invoke(cmd, ["--help"]).output.split())


def test_gpqa_loader_on_hand_made_items(tmp_path):
    """GPQA is gated upstream: users point --questions at their copy; the loader reads the same format."""
    items = [{"question": "Which particle mediates the electromagnetic force? The options are: (A) gluon (B) photon "
                          "(C) W boson (D) graviton", "gold_answer": "B"},
             {"question": "What is the spin of an electron? The options are: (A) 0 (B) 1 (C) 1/2 (D) 3/2",
              "gold_answer": "C"}]
    f = tmp_path / "gpqa_diamond.json"
    f.write_text(json.dumps(items))
    qs = load_questions(f)
    assert [(q.gold, q.kind, q.id) for q in qs] == [("B", "letter", "gpqa_diamond-0"), ("C", "letter", "gpqa_diamond-1")]
    items.append({"question": "Five options (A) a (B) b (C) c (D) d (E) e", "gold_answer": "E"})
    f.write_text(json.dumps(items))
    with pytest.raises(ValueError, match="item 2: 5 options, gpqa has at most 4"):
        load_questions(f)


def test_cli_dataset_option(tmp_path):
    """`symoe plan --dataset aime24` reads the bundled split: the plan records each question's text hash."""
    import symoe

    cfg = symoe.Config.bundled("paper16")
    qs = load_questions("aime24")
    a = symoe.route(symoe.Profiles.from_dict({m: {"math": 1.0} for m in cfg.names[:2]}), [["math"]] * len(qs),
                    k=1, question_ids=[q.id for q in qs])
    a.save(tmp_path / "a.jsonl")
    base = ["plan", "--assignment", str(tmp_path / "a.jsonl"), "--config", "paper16", "--optimize", "0"]
    r = CliRunner().invoke(cli, [*base, "--dataset", "aime24", "--out", str(tmp_path / "p.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p.json").read_text())["question_hashes"] == [q.text_hash for q in qs]
    r = CliRunner().invoke(cli, [*base, "--dataset", "aime24", "--split", "validation"])
    assert r.exit_code == 2 and "354 questions do not match the assignment's 30" in r.output
    r = CliRunner().invoke(cli, [*base, "--dataset", "aime24", "--questions", "x.json"])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(cli, [*base, "--split", "validation"])
    assert r.exit_code == 2 and "--split needs --dataset" in r.output
