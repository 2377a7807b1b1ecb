"""Export CKPT (an artifact folder, 'default', or METHOD:LIBRARY/NAME) to a new artifact
folder with model.onnx + OpenVINO IR (model.xml/.bin).

python export/to_openvino.py CKPT --out DIR
"""

import sys

from engine.cli import main
from engine.requires import require_torch_or_exit

if __name__ == "__main__":
    require_torch_or_exit("export/to_openvino.py", "exporting (tracing the graph)")
    sys.exit(main(["export", *sys.argv[1:], "--format", "openvino"]))
