"""``torchrun --nproc_per_node=2 -m crossent compare`` (gloo) gives the numbers of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from crossent.compare import CompareConfig, run_compare

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
]

SRC = Path(__file__).resolve().parents[1] / "src"

# breast-cancer's training split has 343 rows: batches of 57 leave a last batch of one row,
# so rank 1 gets an empty shard there, and every other batch is split 29 / 28 -- uneven.
ARGS = dict(
    data="breast-cancer",
    losses=["bce", "focal:gamma=2,alpha=0.25", "asl"],
    seeds=2,
    max_epochs=8,
    patience=4,
    hidden=(16,),
    batch_size=57,
    lr=3e-3,
)


def test_two_processes_match_one(tmp_path):
    single = run_compare(CompareConfig(**ARGS))
    assert single.splits[0]["train"] % ARGS["batch_size"] == 1

    out = tmp_path / "ddp"
    cli = [
        "--data",
        ARGS["data"],
        *[a for loss in ARGS["losses"] for a in ("--loss", loss)],
        "--seeds",
        "2",
        "--epochs",
        "8",
        "--patience",
        "4",
        "--hidden",
        "16",
        "--batch-size",
        "57",
        "--lr",
        "0.003",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    env["OMP_NUM_THREADS"] = "1"
    # --standalone: torchrun picks a free port for the rendezvous itself.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "crossent",
            "compare",
            *cli,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["world_size"] == 2

    rows = {(r["loss"], r["seed"]): r for r in data["rows"]}
    assert len(rows) == len(single.runs) == 6
    for run in single.runs:
        row = rows[(run.loss, run.seed)]
        assert (
            row["best_epoch"] == run.history.best_epoch
            and row["epochs_run"] == run.history.epochs_run
        )
        for metric in single.columns:
            # Same gradients up to float32 summation order: equal to far below seed noise.
            assert row[metric] == pytest.approx(run.metrics[metric], abs=1e-5), (run.loss, metric)
    histories = {(h["loss"], h["seed"]): h for h in data["histories"]}
    for run in single.runs:
        h = histories[(run.loss, run.seed)]
        assert h["train_loss"] == pytest.approx(run.history.train_loss, rel=1e-4)
        assert h["val_loss"] == pytest.approx(run.history.val_loss, rel=1e-4)
