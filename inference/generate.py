"""Render a study's scene hypotheses (same as ``metamergen generate``).

    python inference/generate.py --scanpaths data/freeview/scanpaths.jsonl --prefixes 1,2,3,5,10 \
        --hypotheses 4 --conditions both,foveal,peripheral --random-control \
        --adapters path/to/adapters --out outputs/study --device cuda --dtype float16

The work is done by :mod:`metamergen.study`; re-running the same command resumes.
"""

import sys

from metamergen.commands.generate import main

if __name__ == "__main__":
    sys.exit(main())
