"""Choose among ALA training settings on the VALIDATION part of the kahikatea split (never the test part).

For each trained ALA artifact given (one per setting: lambda, learning rate, ...), on the split's validation images:
the mean IoU of alpha with the ground-truth masks (``mean`` rule, the authors' own) on the positives, and the
accuracy on all. The setting with the best validation mIoU wins (lambda: ``training/ala.py`` ``DEFAULT_LAMBDA``);
the numbers are written to ``benchmarks/results/ala-kahikatea/lambda.json``. ::

    python benchmarks/ala_lambda.py --artifact lam1_15=WORK/ala-lam1_15 --artifact lam1=WORK/ala-lam1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import ala_kahikatea as ak  # noqa: E402
import torch  # noqa: E402

from engine.artifact import load_artifact  # noqa: E402
from engine.graph import graph_from_artifact  # noqa: E402
from engine.metrics import evaluate  # noqa: E402
from engine.report import bootstrap_ci, format_table, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ala_lambda.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", action="append", required=True, metavar="LABEL=DIR")
    p.add_argument("--split", default=str(ak.DEFAULT_SPLIT))
    p.add_argument("--out", default=str(ak.RESULTS / "lambda.json"))
    args = p.parse_args(argv)
    sd = ak.load_split(args.split)
    rows, inputs = [], {}
    for spec in args.artifact:
        label, _, path = spec.partition("=")
        art = load_artifact(path)
        key = tuple(art.preprocess.input_size)
        if key not in inputs:
            inputs[key] = ak.prepare_inputs(sd.parts["val"], sd.root, art.preprocess)
        inp = inputs[key]
        graph = graph_from_artifact(art)
        with torch.no_grad():
            logits, sal = graph(torch.from_numpy(inp.x))
        sal_up = torch.nn.functional.interpolate(sal[:, None], size=inp.x.shape[-2:], mode="bilinear")[:, 0].numpy()
        miou = evaluate("miou", "mean", sal_up[inp.pos], inp.masks_pos)["miou"]
        lo, hi = bootstrap_ci(miou.per_image)
        acc = float((logits.argmax(1).numpy() == inp.labels).mean())
        t = art.manifest.get("training", {})
        rows.append({"run": label, "lambda": t.get("loss", {}).get("lambda"), "lr": t.get("optimizer", {}).get("lr"),
                     "artifact": path, "val_miou_mean_rule": float(miou.value),
                     "ci95": [lo, hi], "val_accuracy": acc, "n_val": len(inp.names), "n_val_masked": len(inp.pos),
                     "best_epoch": t.get("early_stopping", {}).get("best_epoch")})  # fmt: skip
    best = max(rows, key=lambda r: r["val_miou_mean_rule"])
    print(format_table(rows, ["run", "lambda", "lr", "val_miou_mean_rule", "val_accuracy", "best_epoch"]))
    print(f"best on validation: {best['run']} (lambda {best['lambda']}, lr {best['lr']})")
    write_json(args.out, {"split": "val (never test)", "metric": "mIoU, mean rule, val positives", "runs": rows,
                          "chosen": best["run"], "chosen_lambda": best["lambda"], "chosen_lr": best["lr"]})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
