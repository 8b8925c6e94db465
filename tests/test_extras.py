"""Every optional extra: where it is missing, one line names the extra to install (no traceback)."""

import subprocess
import sys

import pytest

from symoe.errors import MissingExtra, require


def _cli_without(modules, args, tmp_path):
    """Run the CLI in a child where ``modules`` cannot be imported (as in an install without their extra)."""
    code = (f"import sys\nfor m in {modules!r}: sys.modules[m] = None\n"
            f"sys.argv = ['symoe', *{args!r}]\nfrom symoe.cli import cli\ncli()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(MissingExtra, match=r"keyword matching needs the 'tokenizers' package.*pip install 'symoe\[remote\]'"):
        require("tokenizers", "keyword matching")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtra, match=r"pip install 'symoe\[ray\]'"):
        require("ray", "a [cluster] pool")
    require("numpy", "anything")  # present: no error


@pytest.mark.parametrize("module,extra", [("tokenizers", "remote"), ("safetensors", "remote")])
def test_keyword_matching_without_the_remote_extra(module, extra, tmp_path):
    """The embedder is needed by `symoe run`'s matching stage: checked before anything loads."""
    code = (f"import sys\nsys.modules[{module!r}] = None\nfrom symoe.method.matching import Embedder\n"
            "try:\n    Embedder()\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert f"keyword matching needs the '{module}' package" in out.stdout
    assert f"pip install 'symoe[{extra}]'" in out.stdout and "Traceback" not in out.stderr


def test_local_engine_without_vllm_is_one_line():
    code = ("import sys\nsys.modules['vllm'] = None\nfrom pathlib import Path\n"
            "from symoe.generation.local import LocalEngine\n"
            "e = LocalEngine(0, {}, Path('.'))  # an endpoint-only pool's host device: built, never loads\n"
            "try:\n    e.prepare()\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "the in-process engine of device 0 needs the 'vllm' package" in out.stdout, out.stdout + out.stderr
    assert "pip install 'symoe[cpu]' (CPU) or 'symoe[gpu]' (GPU)" in out.stdout


def test_ray_pool_without_the_ray_extra():
    code = ("import sys\nsys.modules['ray'] = None\nfrom symoe.cluster.live import connect\n"
            "try:\n    connect('auto')\nexcept RuntimeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "needs the 'ray' package" in out.stdout and "pip install 'symoe[ray]'" in out.stdout, out.stdout + out.stderr


def test_symoe_run_refuses_before_the_keyword_stage(tmp_path):
    """Without the embedder's packages `symoe run` stops at its checks, before any model loads."""
    pool = tmp_path / "pool.toml"
    pool.write_text('[engine]\nplatform = "cpu"\n[devices]\ncount = 1\nmemory_gb = 8.0\n' + "".join(
        f'[[model]]\nname = "{n}"\nendpoint = "http://127.0.0.1:9/v1"\n'
        for n in ("SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "gemma-3-270m")))
    out = _cli_without(["tokenizers"], ["run", "--config", str(pool), "--limit", "1", "--out", str(tmp_path / "o"),
                                        "--store", str(tmp_path / "s.sqlite")], tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "keyword matching needs the 'tokenizers' package" in out.stderr and "symoe[remote]" in out.stderr


def test_cli_turns_an_unchecked_missing_extra_into_one_line(tmp_path):
    """The CLI's last line of defence: an optional module imported deep inside a command."""
    code = ("import sys\nimport symoe.cli.plans as p\n"
            "def boom(*a, **k):\n    import tokenizers\n"
            "sys.modules['tokenizers'] = None\np.route = boom\n"
            "sys.argv = ['symoe', 'route', '--profiles', 'x', '--questions', 'y', '--out', 'z']\n"
            "from symoe.cli import cli\ncli()\n")
    (tmp_path / "x").write_text('{"m": {"algebra": 1}}')
    (tmp_path / "y").write_text('[{"id": "q", "keywords": ["algebra"]}]')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip() == "Error: symoe route needs the 'tokenizers' package, which is not installed: " \
                                 "pip install 'symoe[remote]'"


def test_endpoint_pool_runs_without_vllm_or_torch(tmp_path):
    """`symoe run` on a pool of endpoints in an interpreter where vllm, torch and transformers cannot be
    imported (as after `pip install 'symoe[remote]'`): every stage runs, every generation is stored."""
    from openai_fake_server import FakeOpenAI
    from symoe.store import Store

    names = ["SmolLM2-135M-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "gemma-3-270m"]
    with FakeOpenAI(models=names) as srv:
        pool = '[engine]\nplatform = "cpu"\nmax_tokens = 32\n[devices]\ncount = 1\nmemory_gb = 8.0\n'
        pool += "".join(f'\n[[model]]\nname = "{n}"\nendpoint = "{srv.url}"\n' for n in names)
        (tmp_path / "pool.toml").write_text(pool)
        out = _cli_without(["vllm", "torch", "transformers", "sentence_transformers"],
                           ["run", "--config", str(tmp_path / "pool.toml"), "--limit", "3", "--out", str(tmp_path / "out"),
                            "--store", str(tmp_path / "s.sqlite")], tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    with Store(tmp_path / "s.sqlite") as st:
        assert st.count("expert") == 9 and st.count("aggregate") == 3
