"""Bad input is refused up front with one message naming the file, field or argument and its value
(issue 10). No test here loads a model: each one fails before any would, which is the point."""

import json
import os
import sqlite3
import struct

import pytest
from click.testing import CliRunner

import symoe.pipeline
from symoe import Config, Plan, Profiles, SymoeError, plan, route
from symoe.cli import main
from symoe.execution.run import check_plan_matches
from symoe.generation import Sampling
from symoe.method.datasets import Question, load_questions
from symoe.models.fetch import check_model_folder
from symoe.pipeline import RunSettings, Task, check_run
from symoe.store import Store


def write_model(folder):
    """A folder that passes the model check (config.json, one complete safetensors file)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return folder


def questions(path, texts, ids=None):
    ids = ids or [f"q{i}" for i in range(len(texts))]
    path.write_text("".join(json.dumps({"id": i, "question": f"{t} (A) yes (B) no", "answer": "A"}) + "\n"
                            for i, t in zip(ids, texts)))
    return path


@pytest.fixture
def pool(tmp_path, monkeypatch):
    """A two-model CPU pool on valid-looking folders, its profiles, task and questions; any stage
    that would load a model fails the test."""
    for m in ("a", "b"):
        write_model(tmp_path / "models" / m)
    cfg = tmp_path / "pool.toml"
    cfg.write_text('[engine]\nplatform = "cpu"\n[devices]\nmemory_gb = 8.0\n' + "".join(
        f'[[model]]\nname = "{m}"\npath = "{tmp_path / "models" / m}"\nweight_gb = 0.1\n' for m in ("a", "b")))
    (tmp_path / "profiles.json").write_text(json.dumps({"a": {"algebra": 2}, "b": {"law": 3}}))
    (tmp_path / "task.json").write_text(json.dumps({"name": "t", "aggregator": "a", "keyword_model": "b"}))
    questions(tmp_path / "qs.jsonl", ["Is 2 even?", "Is 3 odd?", "Is 5 prime?"])

    def no_stage(*a, **k):
        raise AssertionError("a stage started: bad input must be refused before any model loads")

    monkeypatch.setattr(symoe.pipeline, "annotate", no_stage)
    monkeypatch.setattr(symoe.pipeline, "run_plan", no_stage)
    return tmp_path


def run(pool, *args):
    """`symoe run` on the pool, with ``args`` overriding the defaults."""
    opts = {"--questions": str(pool / "qs.jsonl"), "--format": "jsonl", "--config": str(pool / "pool.toml"),
            "--profiles": str(pool / "profiles.json"), "--task": str(pool / "task.json"),
            "--store": str(pool / "store.sqlite"), "--out": str(pool / "out")}
    extra = list(args)
    for i in range(0, len(extra) - 1):
        if extra[i] in opts:
            opts[extra[i]] = extra[i + 1]
            extra[i:i + 2] = [None, None]
    argv = ["run"] + [x for kv in opts.items() for x in kv] + [x for x in extra if x is not None]
    return CliRunner().invoke(main, argv)


def refused(r, *parts):
    """Exit code 2, one clean message containing every part, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output and not isinstance(r.exception, (AssertionError, TypeError, KeyError))
    for p in parts:
        assert p in r.output, (p, r.output)


# -- silent wrong results ------------------------------------------------------------------------

def test_duplicate_question_ids_are_refused(pool):
    dup = questions(pool / "dup.jsonl", ["Is 2 even?", "Is 9 prime?"], ids=["x1", "x1"])
    with pytest.raises(SymoeError, match=r"dup\.jsonl item 1: duplicate question id 'x1' \(also item 0\)"):
        load_questions(dup)
    refused(run(pool, "--questions", str(dup)), "dup.jsonl", "duplicate question id 'x1'")
    kw = pool / "kw.jsonl"
    kw.write_text(json.dumps({"id": "x", "keywords": ["law"]}) + "\n" + json.dumps({"id": "x", "keywords": ["law"]}))
    refused(CliRunner().invoke(main, ["route", "--profiles", str(pool / "profiles.json"), "--questions", str(kw),
                                      "--out", str(pool / "a.jsonl")]), "kw.jsonl", "duplicate question id 'x'")
    same = [Question("q", "t1", "A", "letter"), Question("q", "t2", "A", "letter")]
    with pytest.raises(SymoeError, match="duplicate question id 'q'"):
        check_run(same, Config.from_toml(pool / "pool.toml"), Profiles.from_json(pool / "profiles.json"),
                  Task.from_json(pool / "task.json"), RunSettings())


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused(pool, limit):
    refused(run(pool, "--limit", limit), "'--limit'", f"{limit} is not in the range x>=1")
    with pytest.raises(SymoeError, match=f"limit must be >= 1, got {limit}"):
        load_questions(pool / "qs.jsonl", limit=int(limit))
    assert len(load_questions(pool / "qs.jsonl", limit=3)) == 3  # a limit of all keeps all


@pytest.mark.parametrize("tokens", ["0", "-5"])
def test_max_tokens_below_one_is_refused_not_replaced(pool, tokens):
    refused(run(pool, "--max-tokens", tokens), "'--max-tokens'", f"{tokens} is not in the range x>=1")
    r = CliRunner().invoke(main, ["run-plan", "--questions", str(pool / "qs.jsonl"), "--plan", str(pool / "qs.jsonl"),
                                  "--aggregate-max-tokens", tokens])
    refused(r, "'--aggregate-max-tokens'", tokens)
    with pytest.raises(SymoeError, match=f"max_tokens must be >= 1, got {tokens}"):
        check_run(load_questions(pool / "qs.jsonl"), Config.from_toml(pool / "pool.toml"),
                  Profiles.from_json(pool / "profiles.json"), Task.from_json(pool / "task.json"),
                  RunSettings(Sampling(max_tokens=int(tokens))))


def test_run_plan_refuses_other_question_texts_under_the_same_ids(pool):
    qs = load_questions(pool / "qs.jsonl")
    ids = [q.id for q in qs]
    a = route(Profiles.from_json(pool / "profiles.json"), [["law"]] * len(qs), k=2, question_ids=ids)
    a.save(pool / "a.jsonl")
    r = CliRunner().invoke(main, ["plan", "--assignment", str(pool / "a.jsonl"), "--config", str(pool / "pool.toml"),
                                  "--aggregator", "a", "--questions", str(pool / "qs.jsonl"),
                                  "--out", str(pool / "plan.json")])
    assert r.exit_code == 0, r.output
    p = Plan.from_json(pool / "plan.json")
    assert p.question_hashes == tuple(q.text_hash for q in qs)  # written and read back
    check_plan_matches(p, qs, None)
    other = questions(pool / "other.jsonl", ["Is 2 even?", "Is 4 odd?", "Is 5 prime?"])  # q1 differs
    r = CliRunner().invoke(main, ["run-plan", "--questions", str(other), "--format", "jsonl", "--plan",
                                  str(pool / "plan.json"), "--store", str(pool / "store.sqlite")])
    refused(r, "question 'q1' has a different text from the one planned")
    assert not (pool / "store.sqlite").exists()


# -- tracebacks instead of messages -------------------------------------------------------------

def test_store_under_a_file_is_a_message(pool):
    (pool / "afile").write_text("x")
    refused(run(pool, "--store", str(pool / "afile" / "store.sqlite")),
            f"store {pool / 'afile' / 'store.sqlite'}: cannot create its folder", "a file is in the way")


def test_read_only_store_is_found_before_any_model_loads(pool, monkeypatch):
    Store(pool / "store.sqlite").close()
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda p, **kw: connect(f"file:{p}?mode=ro", uri=True, **kw))
    with pytest.raises(SymoeError, match="store .*store.sqlite is not writable: attempt to write a readonly database"):
        Store(pool / "store.sqlite")
    refused(run(pool), "store.sqlite is not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files")
def test_read_only_store_file(pool):
    Store(pool / "store.sqlite").close()
    (pool / "store.sqlite").chmod(0o444)
    refused(run(pool), "store.sqlite is not writable")


@pytest.mark.parametrize("key", ["config", "arrays"])
def test_plan_file_missing_a_key(pool, key):
    a = route(Profiles.from_json(pool / "profiles.json"), [["law"]] * 3, k=2, question_ids=["q0", "q1", "q2"])
    doc = json.loads(plan(a, Config.from_toml(pool / "pool.toml")).to_json())
    del doc[key]
    (pool / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(SymoeError, match=f"plan .*plan.json: missing key '{key}'"):
        Plan.from_json(pool / "plan.json")
    r = CliRunner().invoke(main, ["run-plan", "--questions", str(pool / "qs.jsonl"), "--format", "jsonl",
                                  "--plan", str(pool / "plan.json"), "--store", str(pool / "store.sqlite")])
    refused(r, "plan.json: missing key", repr(key))


def test_non_utf8_questions_file_is_named(pool):
    bad = pool / "latin1.jsonl"
    bad.write_bytes(json.dumps({"id": "q", "question": "caf\u00e9 (A) x", "answer": "A"}, ensure_ascii=False)
                    .encode("latin-1"))
    with pytest.raises(SymoeError, match=r"dataset .*latin1\.jsonl is not UTF-8 text \(byte 28: invalid"):
        load_questions(bad)
    refused(run(pool, "--questions", str(bad)), "latin1.jsonl is not UTF-8 text")
    refused(CliRunner().invoke(main, ["route", "--profiles", str(pool / "profiles.json"), "--questions", str(bad),
                                      "--out", str(pool / "a.jsonl")]), "latin1.jsonl is not UTF-8 text")


@pytest.mark.parametrize("table, line, message", [
    ("devices", 'memory_gb = "8GB"', "[devices]: memory_gb should be a valid number, got '8GB'"),
    ("devices", 'overlap_load = "false"', "[devices]: overlap_load should be a valid boolean, got 'false'"),
    ("engine", "max_tokens = 0", "[engine]: max_tokens should be greater than 0, got 0"),
    ("defaults", "load_bandwidth_gbps = 0", "[defaults]: load_bandwidth_gbps should be greater than 0, got 0"),
])
def test_config_values_name_file_table_key_and_value(tmp_path, table, line, message):
    cfg = tmp_path / "pool.toml"
    cfg.write_text(f'[{table}]\n{line}\n[[model]]\nname = "a"\nweight_gb = 1.0\n')
    with pytest.raises(SymoeError) as e:
        Config.from_toml(cfg)
    assert str(e.value) == f"{cfg} {message}"
    refused(CliRunner().invoke(main, ["plan", "--assignment", str(cfg), "--config", str(cfg)]), f"{cfg} {message}")


def test_model_table_value_is_named_with_its_table(tmp_path):
    cfg = tmp_path / "pool.toml"
    cfg.write_text('[[model]]\nname = "a"\nweight_gb = 1.0\n[[model]]\nname = "b"\nweight_gb = "big"\n')
    with pytest.raises(SymoeError, match=r"pool.toml \[\[model\]\] #2: weight_gb should be a valid number, got 'big'"):
        Config.from_toml(cfg)


@pytest.mark.parametrize("k", ["0", "4611686018427387904"])
def test_k_out_of_range(pool, k):
    refused(run(pool, "-k", k), "'-k'", f"{k} is not in the range 1<=x<=65536")
    refused(CliRunner().invoke(main, ["route", "--profiles", str(pool / "profiles.json"), "--questions",
                                      str(pool / "qs.jsonl"), "--out", str(pool / "a.jsonl"), "-k", k]), "'-k'", k)
    with pytest.raises(SymoeError, match=f"k must be an integer in \\[1, 65536\\], got {k}"):
        check_run(load_questions(pool / "qs.jsonl"), Config.from_toml(pool / "pool.toml"),
                  Profiles.from_json(pool / "profiles.json"), Task.from_json(pool / "task.json"), RunSettings(k=int(k)))


def test_huge_profile_score_is_a_message(pool):
    (pool / "big.json").write_text(json.dumps({"a": {"law": 1e30}, "b": {"law": 1}}))
    kw = pool / "kw.jsonl"
    kw.write_text(json.dumps({"id": "x", "keywords": ["law"]}))
    refused(CliRunner().invoke(main, ["route", "--profiles", str(pool / "big.json"), "--questions", str(kw),
                                      "--out", str(pool / "a.jsonl")]), "keyword 'law' is 1e+30, out of range")


def test_unknown_config_name(pool):
    refused(run(pool, "--config", "no-such-pool"), "--config 'no-such-pool': no such file, nor a bundled config",
            "paper16", "tiny")


# -- errors that come late: all found before the keyword stage -----------------------------------

def truncate(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-4])


def garble(folder):
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!" + bytes(16))


def missing_shard(folder):
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-2.safetensors"}}))


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "config.json").unlink(), "cannot read config.json: No such file or directory"),
    (lambda f: (f / "config.json").write_text("{"), "config.json is not valid JSON"),
    (lambda f: (f / "model.safetensors").unlink(), "no weight files (*.safetensors or pytorch_model*.bin)"),
    (truncate, "bytes, its header declares"),
    (garble, "unreadable safetensors header"),
    (missing_shard, "weight file model-2.safetensors is missing"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 4), "is truncated or not safetensors (4 bytes"),
])
def test_run_checks_every_model_folder_first(pool, breakage, message):
    breakage(pool / "models" / "b")  # the keyword model: the first stage would load it
    refused(run(pool), f"model b ({pool / 'models' / 'b'})", message)
    assert not (pool / "out" / "assignment.jsonl").exists()


def test_run_checks_expert_folders_for_baselines(pool):
    import shutil

    shutil.rmtree(pool / "models" / "a")
    refused(run(pool, "--baseline", "top-k", "-k", "1"), f"model a ({pool / 'models' / 'a'}): no such folder")


def test_check_model_folder_accepts_a_complete_model(tmp_path):
    check_model_folder(write_model(tmp_path / "m"))
    with pytest.raises(SymoeError, match="no such folder"):
        check_model_folder(tmp_path / "nothing")


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "'--seed': -1 is not in the range 0<=x<=18446744073709551615"),
    (["--rare-threshold", "nan"], "rare_threshold must be finite and at most 1, got nan"),
    (["--baseline", "top-k", "-k", "5"], "k=5 for the top-k baseline, but only 2 models are profiled"),
    (["--task", "missing-task.json"], "task config missing-task.json"),
])
def test_run_checks_arguments_and_files_first(pool, args, message):
    refused(run(pool, *args), message)
    assert not (pool / "out" / "assignment.jsonl").exists()


def test_run_plan_checks_model_folders_before_the_store(pool):
    a = route(Profiles.from_json(pool / "profiles.json"), [["law"]] * 3, k=2, question_ids=["q0", "q1", "q2"])
    plan(a, Config.from_toml(pool / "pool.toml")).to_json(pool / "plan.json")
    truncate(pool / "models" / "b")  # "law" routes to b
    r = CliRunner().invoke(main, ["run-plan", "--questions", str(pool / "qs.jsonl"), "--format", "jsonl",
                                  "--plan", str(pool / "plan.json"), "--store", str(pool / "store.sqlite")])
    refused(r, f"model b ({pool / 'models' / 'b'}): weight file model.safetensors is", "(truncated)")
    assert not (pool / "store.sqlite").exists()


# -- issue 24: the API refuses what the CLI refuses; errors name what the user wrote ---------------

def test_route_refuses_k_below_one_like_the_cli(pool):
    prof = Profiles.from_json(pool / "profiles.json")
    for k in (0, -1):
        with pytest.raises(ValueError, match=f"k must be an integer in \\[1, 65536\\], got {k}"):
            route(prof, [["law"]] * 3, k=k)


def test_model_larger_than_every_device_is_named_with_its_file_and_keys(pool):
    cfg = pool / "big.toml"
    cfg.write_text('[devices]\nmemory_gb = 1.0\n[defaults]\nextra_fraction = 0.1\n'
                   '[[model]]\nname = "small"\nweight_gb = 0.1\n[[model]]\nname = "huge"\nparams_b = 0.7\n')
    a = route(Profiles.from_dict({"small": {"law": 1}, "huge": {"law": 5}}), [["law"]] * 3, k=2, question_ids=["q0", "q1", "q2"])
    a.save(pool / "a.jsonl")
    parts = (f"{cfg}: model 'huge' needs 1.54 GB", "params_b", "[[model]]", "the largest device has 1.00 GB",
             "[devices] memory_gb")
    with pytest.raises(SymoeError) as e:
        plan(a, Config.from_toml(cfg))
    assert all(p in str(e.value) for p in parts), str(e.value)
    refused(CliRunner().invoke(main, ["plan", "--assignment", str(pool / "a.jsonl"), "--config", str(cfg)]), *parts)


def test_run_plan_with_another_k_says_what_the_plan_was_made_for(pool):
    a = route(Profiles.from_json(pool / "profiles.json"), [["law"]] * 3, k=2, question_ids=["q0", "q1", "q2"])
    a.save(pool / "a.jsonl")
    r = CliRunner().invoke(main, ["plan", "--assignment", str(pool / "a.jsonl"), "--config", str(pool / "pool.toml"),
                                  "--questions", str(pool / "qs.jsonl"), "--out", str(pool / "plan.json")])
    assert r.exit_code == 0, r.output
    doc = json.loads((pool / "plan.json").read_text())
    for edit, parts in [({"k": 1}, ("plan.json was made with k=2", "its 'k' says 1", "route again with -k 1")),
                        ({"k": 4}, ("plan.json was made with k=2", "its 'k' says 4", "route again with -k 4")),
                        ({"question_hashes": doc["question_hashes"][:2]},
                         ("plan.json holds 3 questions but records 2 question texts", "symoe plan --questions"))]:
        (pool / "plan.json").write_text(json.dumps({**doc, **edit}))
        with pytest.raises(SymoeError) as e:
            Plan.from_json(pool / "plan.json")
        assert all(p in str(e.value) for p in parts), str(e.value)
        refused(CliRunner().invoke(main, ["run-plan", "--questions", str(pool / "qs.jsonl"), "--format", "jsonl",
                                          "--plan", str(pool / "plan.json"), "--store", str(pool / "store.sqlite")]),
                *parts)
    # run-plan --assignment routed with another k
    (pool / "plan.json").write_text(json.dumps(doc))
    route(Profiles.from_json(pool / "profiles.json"), [["law"]] * 3, k=3,
          question_ids=["q0", "q1", "q2"]).save(pool / "a3.jsonl")
    refused(CliRunner().invoke(main, ["run-plan", "--questions", str(pool / "qs.jsonl"), "--format", "jsonl",
                                      "--plan", str(pool / "plan.json"), "--assignment", str(pool / "a3.jsonl"),
                                      "--store", str(pool / "store.sqlite")]),
            "the plan was made with k=2, the assignment has k=3", "symoe plan --assignment")
    assert not (pool / "store.sqlite").exists()
