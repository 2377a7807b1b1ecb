"""Export CKPT (an artifact folder, 'default', or METHOD:LIBRARY/NAME) to a new artifact
folder with model.onnx + OpenVINO IR (model.xml/.bin).

python export/to_openvino.py CKPT --out DIR
"""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:], "--format", "openvino"]))
