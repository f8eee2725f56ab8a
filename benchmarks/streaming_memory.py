"""Peak memory of an ImageFolder run's data path: streamed from disk vs held in memory, at two folder sizes.

For each folder size (default 5 000 and 50 000 RGB 32x32 PNG images, 10 classes, generated once under
--root) a fresh Python process builds the dataset exactly as a run does (``build_dataset``: header scan,
val split, test subset) and iterates one full training epoch through the training loader
(``make_loaders``: shuffling, seeded augmentation, and for a streamed split ``data.workers`` decoding
processes). A sampler thread reads every 20 ms the RSS of that process and the private memory (USS) of
each worker (pages a forked worker still shares with its parent are in the parent's RSS already); the
table shows the peak RSS alone and the peak of RSS + the workers' USS.

Streaming (``data.in_memory_mb: 0``) should stay flat as the folder grows 10x; in memory grows by the
decoded images (N x 3 x 32 x 32 bytes). The validation and test splits are held in memory in both
modes and are fixed here (``--val``, ``--test``), so the difference is the training split alone.

    .venv/bin/python benchmarks/streaming_memory.py                       # 5k and 50k, both modes
    .venv/bin/python benchmarks/streaming_memory.py --sizes 2000 20000 --workers 2

Writes benchmarks/results/streaming_memory.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path

def rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0

def uss_kb(pid):
    # unique set size: a forked worker's own pages; those it still shares with the main process
    # (copy-on-write) are already in the main process's RSS
    try:
        rows = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return rss_kb(pid)
    return sum(int(r.split()[1]) for r in rows if r.startswith(("Private_Clean:", "Private_Dirty:")))

def children(pid):
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out

peak = {"self": 0, "total": 0}
done = threading.Event()
def sample():
    me = os.getpid()
    while not done.is_set():
        own = rss_kb(me)
        total = own + sum(uss_kb(c) for c in children(me))
        peak["self"] = max(peak["self"], own)
        peak["total"] = max(peak["total"], total)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()

import torch
torch.set_num_threads(1)
from edgekd.config import config_from_dict
from edgekd.data import build_dataset
from edgekd.data.files import FileSplit
from edgekd.data.loader import make_loaders

args = json.loads(sys.argv[1])
base_kb = rss_kb(os.getpid())
cfg = config_from_dict({"data": {"dataset": "image_folder", "root": args["root"], "val_size": args["val"],
                                 "test_subset": args["test"], "batch_size": 256, "in_memory_mb": args["in_memory_mb"],
                                 "workers": args["workers"], "augment": {"crop_padding": 2, "hflip": True}}})
t0 = time.perf_counter()
bundle = build_dataset(cfg.data, 0)
t_build = time.perf_counter() - t0
train, _, _ = make_loaders(bundle, cfg.data, 0)
train.set_epoch(0)
t0 = time.perf_counter()
seen = 0
for x, y in train:
    seen += len(y)
t_epoch = time.perf_counter() - t0
time.sleep(0.1)
done.set()
print(json.dumps({"streamed": isinstance(bundle.train, FileSplit), "train_images": len(bundle.train), "seen": seen,
                  "build_s": round(t_build, 2), "epoch_s": round(t_epoch, 2),
                  "images_per_s": round(seen / max(t_epoch, 1e-9), 1), "import_rss_mb": round(base_kb / 1024, 1),
                  "peak_rss_mb": round(peak["self"] / 1024, 1), "peak_with_workers_mb": round(peak["total"] / 1024, 1)}))
"""


def make_folder(root: Path, n: int, size: int, distinct: int = 200) -> Path:
    """``n`` RGB ``size`` x ``size`` PNG files in 10 class folders.

    Memory does not depend on what the pixels show, so ``distinct`` encoded images (smooth random blobs,
    which compress like photos, not like noise) are written round-robin: a 50 000-file folder takes
    seconds to write, and every file is still opened, checked and decoded by the run."""
    import io

    import numpy as np
    from PIL import Image

    folder = root / f"rgb{size}_{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(distinct):
        buf = io.BytesIO()
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    per_class = n // 10
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / str(c) / f"{i:06d}.png").write_bytes(blobs[(c * per_class + i) % distinct])
    done.write_text("ok")
    return folder


def measure(folder: Path, in_memory_mb: float, workers: int, val: int, test: int) -> dict:
    args = {"root": str(folder), "in_memory_mb": in_memory_mb, "workers": workers, "val": val, "test": test}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEKD_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"# Streaming memory: peak RSS of one training epoch's data path ({meta['image']} PNG images)", "",
             f"val {meta['val']} and test {meta['test']} images in memory in every row; batch 256; "
             f"workers {meta['workers']} when streamed; {meta['cpus']} CPUs.", "",
             "| images in folder | mode | train images | build s | epoch s | img/s | peak RSS MB | + workers MB |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['folder_images']} | {'streamed' if r['streamed'] else 'in memory'} | {r['train_images']} | "
                     f"{r['build_s']} | {r['epoch_s']} | {r['images_per_s']} | {r['peak_rss_mb']} | "
                     f"{r['peak_with_workers_mb']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000], help="folder sizes (images)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--root", default="/tmp/edgekd_streaming", help="where the folders are generated (once)")
    p.add_argument("--workers", type=int, default=2, help="data.workers when streamed")
    p.add_argument("--val", type=int, default=1000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--modes", nargs="+", default=["streamed", "memory"], choices=["streamed", "memory"])
    p.add_argument("--out", default=str(RESULTS / "streaming_memory"), help="output path without extension")
    a = p.parse_args(argv)
    rows = []
    for n in a.sizes:
        t0 = time.perf_counter()
        folder = make_folder(Path(a.root), n, a.image_size)
        print(f"folder {folder} ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        for mode in a.modes:
            r = measure(folder, 0.0 if mode == "streamed" else 1e9, a.workers, a.val, a.test)
            r["folder_images"] = n
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    meta = {"image": f"RGB {a.image_size}x{a.image_size}", "val": a.val, "test": a.test, "workers": a.workers,
            "cpus": os.cpu_count()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(rows, meta))
    print(to_markdown(rows, meta))


if __name__ == "__main__":
    main()
