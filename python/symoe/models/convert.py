"""GGUF -> Hugging Face folder (fp32), run in a subprocess by ``symoe.models.fetch``.

vLLM 0.32 cannot read GGUF. transformers dequantises it; the quantisation config is dropped and the
model rebuilt from its config so the saved folder is a plain fp32 checkpoint."""

import argparse
from pathlib import Path


def main() -> None:
    """Convert one GGUF file to a Hugging Face safetensors folder (run as a script)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--add-bos", action="store_true", help="Gemma wants <bos> first")
    args = ap.parse_args()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = Path(args.gguf)
    d, f = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    cfg = AutoConfig.from_pretrained(d, gguf_file=f)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    src = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(src.state_dict())
    if args.add_bos:
        tok.add_bos_token = True  # type: ignore[misc]
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)


if __name__ == "__main__":
    main()
