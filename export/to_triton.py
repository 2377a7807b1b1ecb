"""Write a Triton Inference Server model repository entry for CKPT (an artifact folder, 'default', a built-in name, or
METHOD:LIBRARY/NAME): REPO/<name>/config.pbtxt, 1/model.onnx (or the OpenVINO IR, or a TensorRT plan), labels.txt,
preprocess.json and client_example.py. The Triton server itself is not run here: it ships as a container.

python export/to_triton.py CKPT --out REPO [--backend onnxruntime|openvino|tensorrt] [--name NAME] [--max-batch 8]
                           [--max-queue-delay-us 100] [--instances 1] [--kind KIND_CPU|KIND_GPU] [--force]
"""

import sys

from engine.triton import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
