"""Score a study's generations against their scenes (same as ``metamergen score``).

    python inference/score.py --manifest outputs/study/manifest.jsonl --out outputs/study/scores.csv \
        --dreamsim-cache ~/.cache/metamergen/dreamsim --device cuda

The work is done by :mod:`metamergen.evaluation.scoring`.
"""

import sys

from metamergen.commands.score import main

if __name__ == "__main__":
    sys.exit(main())
