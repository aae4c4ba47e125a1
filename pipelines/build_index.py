"""Runnable entry of the build job (what torchrun starts); the options are ``tpsearch build``'s.

    python pipelines/build_index.py data/demo/stdlib_docs.parquet --out demo-index --title-column title
    python pipelines/build_index.py --config pipelines/configs/demo.yaml
    torchrun --nproc_per_node=2 pipelines/build_index.py CORPUS --out DIR

All logic lives in ``tpsearch.pipeline``; this file only hands its arguments to the CLI (under
torchrun, each rank ends with the CLI's exit status without the interpreter's teardown:
``tpsearch.pipeline.distributor.run_rank``).
"""

import sys

from tpsearch.cli import main
from tpsearch.pipeline.distributor import run_rank

if __name__ == "__main__":
    run_rank(lambda argv: main(argv, prog_name="build_index.py"), ["build", *sys.argv[1:]])
