"""Batch entry point: replay locks on the final model (``wanflow replay`` as a script, for schedulers and CI).

    python pipelines/replay.py --model t2v-a14b --mode fresh
    python pipelines/replay.py --locks hero sunset --mode draft-v2v --strength 0.4 --force

Arguments are those of ``wanflow replay --help``. Exit status: 0 all rendered or skipped, 1 some lock failed (each
recorded as a FAILED run with its notebook), 2 bad input (nothing ran).
"""

import sys

from wanflow.replay import main

if __name__ == "__main__":
    sys.exit(main())
