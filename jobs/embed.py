"""spark-submit entry point: `spark-submit jobs/embed.py ARGS` = `curate embed --engine spark ARGS`.

The Spark master comes from spark-submit (--master); see `curate embed --help` for ARGS. Each
Python worker loads the model once (workers are reused) and runs torch with spark.task.cpus
threads (Spark sets OMP_NUM_THREADS); on GPU executors, give each task one GPU.
"""

import sys

from curate.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", "--engine", "spark", *sys.argv[1:]]))
