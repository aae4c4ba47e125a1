"""Runnable entry of the build job (what torchrun starts); the options are ``tpsearch build``'s.

    python pipelines/build_index.py data/demo/stdlib_docs.parquet --out demo-index --title-column title
    python pipelines/build_index.py --config pipelines/configs/demo.yaml

All logic lives in ``tpsearch.pipeline``; this file only hands its arguments to the CLI.
"""

import sys

from tpsearch.cli import main

if __name__ == "__main__":
    main(["build", *sys.argv[1:]], prog_name="build_index.py")
