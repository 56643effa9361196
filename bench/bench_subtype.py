"""The subtype answer (bacterial or viral) of several models on the official test half, side by side.

    .venv/bin/python bench/bench_subtype.py default RUN_SEED1 RUN_SEED2     # the figures of docs/subtype.md
    .venv/bin/python bench/bench_subtype.py fast

Each MODEL is evaluated as ``pneumoscan evaluate MODEL --data DATA`` does (patient-bootstrap intervals), on
``chest_xray/test``, which neither training nor any choice of the head saw. A model without a head is given
one first as ``pneumoscan fit-subtype`` does (in a scratch folder: the model's own training split made again
and checked against its data hash). Prints, per model, the subtype ROC-AUC, sensitivity, specificity and
accuracy at the stored threshold with their intervals, the share answered uncertain, the binary ROC-AUC and
sensitivity (unchanged by the head), then the mean and spread over the models. Never run by pytest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="MODEL", help="default, fast, a run folder or a model file")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)

    import numpy as np

    from pneumoscan.evaluation import EvaluateConfig, evaluate
    from pneumoscan.inference import load
    from pneumoscan.training.subtype_fit import fit_subtype

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-subtype-") as tmp:
        for i, model in enumerate(args.models):
            if not load(model).meta.subtype:
                fit_subtype(model, out=Path(tmp) / f"model{i}")
                model = str(Path(tmp) / f"model{i}")
            report = evaluate(EvaluateConfig(models=[model], data=args.data, split="test", bootstrap=args.bootstrap,
                                             out=str(Path(tmp) / f"report{i}"))).report.to_dict()
            subtype, metrics = report["subtype"], report["metrics"]
            if not subtype.get("available"):
                print(f"{args.models[i]}: no subtype figures ({subtype.get('reason')})")
                continue
            figures = subtype["figures"]
            shown = "  ".join(f"{name} {f['value']:.3f} [{f['low']:.3f}, {f['high']:.3f}]" for name, f in figures.items())
            print(f"{args.models[i]}: {subtype['images']} pneumonia images ({subtype['bacterial']} bacterial, "
                  f"{subtype['viral']} viral, {subtype['patients']} patients): {shown}  uncertain "
                  f"{subtype['uncertain_share']['value']:.3f}; binary ROC-AUC "
                  f"{metrics['threshold_free']['roc_auc']['value']:.3f}, sensitivity "
                  f"{metrics['at']['stored']['sensitivity']['value']:.3f}", flush=True)
            rows.append({name: f["value"] for name, f in figures.items()} | {"uncertain": subtype["uncertain_share"]["value"]})
    if len(rows) > 1:
        print("over the models: " + "  ".join(
            f"{k} {np.mean([r[k] for r in rows]):.3f} (sd {np.std([r[k] for r in rows], ddof=1):.3f})" for k in rows[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
