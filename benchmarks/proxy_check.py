"""Does the width search's proxy rank candidates as their final accuracies do? (RESULTS 7.32)

A study, not a product path. `run` trains one candidate of a finished search to the end, as `prunelab run` would
have had the search chosen it: the pipeline's search is replaced by one that reads every candidate from the given
search.jsonl (nothing is re-scored) and returns candidate K as the best. Give the same dense model, targets, seed
and recipe as the run that wrote search.jsonl, so that the candidates are the ones it scored.

    python benchmarks/proxy_check.py run --from RUN/search.jsonl --candidate K -- <prunelab run arguments>
    python benchmarks/proxy_check.py table --from RUN/search.jsonl [--from OTHER/search.jsonl ...] \\
        --finals CANDIDATE=RUN_DIR ... [--json OUT.json]

`table` prints, per candidate with a final run, the proxy accuracy (and each extra search's proxy, for a proxy
scored by another search over the same candidates), the final validation (last epoch) and test accuracy, and
Spearman's rank correlation of each proxy with the final validation and test accuracies; --json writes the same.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from allocation_study import spearman  # (benchmarks/, on the path of a script run from it)
from prunelab.files import read_jsonl, write_json


def pin(rows: list[dict], candidate: int) -> None:
    """Make the pipeline's width search return `candidate` from `rows` (already scored) as its result."""
    import prunelab.pipeline as pipeline
    real = pipeline.search_widths
    chosen = [r for r in rows if r["index"] == candidate and r["feasible"]]
    if not chosen:
        raise SystemExit(f"candidate {candidate} is not a feasible row of the search; pick one of "
                         f"{[r['index'] for r in rows if r['feasible']]}")

    def pinned(model, cfg, **kwargs):
        if cfg.search_budget != len(rows):
            raise SystemExit(f"the search scored {len(rows)} candidates, this run asks for {cfg.search_budget}; "
                             f"pass --search-budget {len(rows)}")
        result = real(model, cfg, **{**kwargs, "done": rows, "record": None})  # scores nothing: every row is done
        return {**result, **chosen[0], "seconds": result["seconds"]}  # (the whole search's time, as it ran)

    pipeline.search_widths = pinned


def final_of(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "epoch" and "val_accuracy" in r]
    final = [r["val_accuracy"] for r in epochs if r.get("phase") == "final fine-tune"]
    return {"test": results["final"]["accuracy"], "val": epochs[-1]["val_accuracy"] if epochs else None,
            "params": results["final"]["params"], "macs": results["final"]["macs"], "final_epochs_val": final}


def table(searches: list[Path], finals: dict[int, Path], out: Path | None) -> None:
    proxies = [{r["index"]: r for r in read_jsonl(s) if r["feasible"]} for s in searches]
    rows = []
    for index, run in sorted(finals.items()):
        final, first = final_of(run), proxies[0].get(index)
        if first is None or first["params"] != final["params"]:
            raise SystemExit(f"{run} is not candidate {index} of {searches[0]} (its params differ); was it run "
                             "with --candidate from that search?")
        # another search scores the same candidate only where it drew the same widths (same seed and space)
        row = {"candidate": index, "run": str(run), **final,
               "proxy": [p[index]["proxy_accuracy"] if p.get(index, {}).get("widths") == first["widths"] else None
                         for p in proxies]}
        rows.append(row)
    header = " | ".join(f"proxy {i + 1}" for i in range(len(searches)))
    print(f"| candidate | {header} | val (last epoch) | test | params | MACs |")
    for r in rows:
        cells = " | ".join("" if p is None else f"{100 * p:.2f}%" for p in r["proxy"])
        print(f"| {r['candidate']} | {cells} | {100 * r['val']:.2f}% | {100 * r['test']:.2f}% | {r['params']:,} | "
              f"{r['macs'] / 1e6:.2f} M |")
    correlations = []
    for i, search in enumerate(searches):
        have = [r for r in rows if r["proxy"][i] is not None]
        c = {"search": str(search), "candidates": len(have),
             "spearman_val": spearman([r["proxy"][i] for r in have], [r["val"] for r in have]),
             "spearman_test": spearman([r["proxy"][i] for r in have], [r["test"] for r in have])}
        correlations.append(c)
        print(f"proxy {i + 1} ({search}): Spearman with final val {c['spearman_val']:+.2f}, with test "
              f"{c['spearman_test']:+.2f} over {len(have)} candidates")
    print(f"final val against test: Spearman {spearman([r['val'] for r in rows], [r['test'] for r in rows]):+.2f}")
    epochs = min(len(r["final_epochs_val"]) for r in rows)
    prefix = [spearman([r["final_epochs_val"][k] for r in rows], [r["test"] for r in rows]) for k in range(epochs)]
    print("the final fine-tune's own val accuracy after epoch 1, 2, ... as the proxy: Spearman with test "
          + " ".join(f"{c:+.2f}" for c in prefix))
    correlations.append({"final_epoch_val_against_test": prefix})
    if out:
        write_json(out, {"rows": rows, "correlations": correlations})


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    else:
        rest = []
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--from", dest="searches", type=Path, action="append", required=True,
                    help="a finished search's search.jsonl (table: the first is the proxy the finals were chosen by)")
    ap.add_argument("--candidate", type=int, help="run: the candidate to train to the end")
    ap.add_argument("--finals", nargs="*", default=[], help="table: CANDIDATE=RUN_DIR of each finished final run")
    ap.add_argument("--json", type=Path, help="table: write the table and correlations here")
    args = ap.parse_args(argv)
    if args.what == "run":
        if args.candidate is None or not rest:
            ap.error("run needs --candidate K and the prunelab run arguments after --")
        pin(read_jsonl(args.searches[0]), args.candidate)
        from prunelab.cli import main as prunelab_main
        return prunelab_main(["run", *rest])
    finals = {int(k): Path(v) for k, v in (f.split("=", 1) for f in args.finals)}
    table(args.searches, finals, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
