"""Rows of RESULTS 7.36 from run folders: `python summ.py DIR/RUN.log ...` (RUN.log may be absent)."""
import json, sys, re
from pathlib import Path
for log in sorted(sys.argv[1:]):
    d = Path(log[:-4])
    txt = Path(log).read_text() if Path(log).exists() else ""  # the /usr/bin/time log (not kept in the records)
    wall = re.findall(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", txt)
    if not (d / "metrics.jsonl").exists(): print(d.name, "running"); continue
    rows = [json.loads(l) for l in open(d / "metrics.jsonl")]
    vals = [round(100 * r["val_accuracy"], 2) for r in rows if r.get("event") == "epoch" and "val_accuracy" in r]
    steps = [r for r in rows if r.get("event") == "step"]
    fin = [r for r in rows if r.get("event") == "final"]
    start = steps[-1]["accuracy_before_finetune"] if steps else None
    rec = steps[-1].get("reconstruction", {}).get("seconds") if steps else None
    print(f"{d.name:14s} start {100*start:.2f}  val {vals}  test {100*fin[0]['accuracy']:.2f}  recon {rec}  wall {wall}" if fin else f"{d.name} no final")
