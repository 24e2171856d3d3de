"""``python tests/training/make_shapes.py DIR [N]``: write the synthetic shapes dataset (for scripts)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_shapes

if __name__ == "__main__":
    make_shapes(Path(sys.argv[1]), n=int(sys.argv[2]) if len(sys.argv) > 2 else 12)
