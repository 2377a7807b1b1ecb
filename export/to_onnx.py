"""Export CKPT (an artifact folder, 'default', or METHOD:LIBRARY/NAME) to a new artifact folder with model.onnx.

python export/to_onnx.py CKPT --out DIR
python export/to_onnx.py CKPT --out DIR --precision fp16
python export/to_onnx.py CKPT --out DIR --precision int8 [--calib PHOTO_DIR] [--calib-count 64]
"""

import sys

from engine.cli import main
from engine.requires import require_torch_or_exit

if __name__ == "__main__":
    require_torch_or_exit("export/to_onnx.py", "exporting (tracing the graph)")
    sys.exit(main(["export", *sys.argv[1:], "--format", "onnx"]))
