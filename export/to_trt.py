"""Build a TensorRT plan for CKPT (an artifact folder, 'default', a built-in name, or METHOD:LIBRARY/NAME) on this
machine's GPU: a new artifact folder with the source's files plus model.plan, its manifest recording the plan
(sha256, TensorRT version, GPU name, compute capability, precision, batch range). The TensorRT gate runs first.

python export/to_trt.py CKPT --out DIR [--precision fp32|fp16|int8] [--max-batch 8] [--opt-batch N] [--workspace 4]
                        [--calib DIR] [--calib-count 64] [--device 0]
python export/to_trt.py CKPT --check-only [--precision fp16] [--json] [--no-lint] [--strict-argmax]

Without TensorRT or a GPU it stops at once (exit code 2) naming the install; --check-only (the gate) runs anywhere.
"""

import sys

from engine.trt_build import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
