"""Train MetamerGen's adapters.

    accelerate launch training/train.py --config configs/paper_sd15_coco.yaml [section.key=value ...]
    accelerate launch training/train.py --config configs/paper_sd15_coco.yaml --resume latest

The training loop lives in :mod:`metamergen.training` (also ``metamergen train``).
"""

import sys

from metamergen.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
