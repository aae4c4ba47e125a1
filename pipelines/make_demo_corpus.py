"""Make the demo corpus from the docstrings of this Python's standard library (no download).

    python pipelines/make_demo_corpus.py --out data/demo/stdlib_docs.parquet --docs 2000

Each document is the first paragraph of a public module, class or function docstring, parsed
from source with ``ast`` (nothing is imported). Columns: ``id`` (qualified name, e.g.
``json.dumps``), ``title`` (the same name, spelled for reading) and ``text``.
"""

from __future__ import annotations

import argparse
import ast
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages",
              "__pycache__", "pydoc_data", "encodings"}


def first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n")[0]
    return " ".join(para.split())


def docs_of(path: Path, root: Path):
    rel = path.relative_to(root).with_suffix("")
    module = ".".join(p for p in rel.parts if p != "__init__")
    try:
        tree = ast.parse(path.read_text(encoding="utf8"))
    except (SyntaxError, UnicodeDecodeError):
        return
    if (doc := ast.get_docstring(tree)):
        yield module, doc
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            if (doc := ast.get_docstring(node)):
                yield f"{module}.{node.name}", doc
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                        if (doc := ast.get_docstring(sub)):
                            yield f"{module}.{node.name}.{sub.name}", doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/demo/stdlib_docs.parquet"))
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--min-chars", type=int, default=40)
    ap.add_argument("--max-chars", type=int, default=300)
    args = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    seen_text, rows = set(), []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & SKIP_PARTS or any(p.startswith("_") and p != "__init__.py" for p in parts):
            continue
        for name, doc in docs_of(path, root):
            text = first_paragraph(doc)
            if not args.min_chars <= len(text) <= args.max_chars or text in seen_text:
                continue
            seen_text.add(text)
            rows.append((name, text))
    step = max(1, len(rows) / args.docs)
    picked = [rows[int(i * step)] for i in range(min(args.docs, len(rows)))]
    table = pa.table({
        "id": [n for n, _ in picked],
        "title": [n.replace(".", " ").replace("_", " ") for n, _ in picked],
        "text": [t for _, t in picked],
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, row_group_size=500, compression="zstd")
    print(f"{args.out}: {len(picked)} documents from {len(rows)} candidates in {root}")


if __name__ == "__main__":
    main()
