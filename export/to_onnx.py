"""Export CKPT (an artifact folder, 'default', or METHOD:LIBRARY/NAME) to a new artifact folder with model.onnx.

python export/to_onnx.py CKPT --out DIR
"""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:], "--format", "onnx"]))
