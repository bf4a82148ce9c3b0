"""Two ranks share one prepared dataset: rank 0 prepares it, both memory-map the same cache
columns, and each reads its own disjoint shard of the users."""

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist

from adarec.config import Config, DataConfig
from tests.distributed.helpers import WORLD, free_port


def _config(root: Path) -> DataConfig:
    return DataConfig(dataset=str(root / "log.csv"), min_user_count=2, min_item_count=2)


def _join(rank: int, port: int) -> None:
    """Join the two-process gloo group as torchrun would, one thread per process."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    os.environ.update({"OMP_NUM_THREADS": "1", "ADAREC_DATA_THREADS": "1"})
    torch_dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _write_log(path: Path, seed: int, users: int, items: int, rows: int) -> None:
    """A small CSV log with Zipf-like item popularity."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,timestamp"]
    lines += [f"u{rng.integers(users)},i{rng.zipf(1.3) % items},{t}" for t in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def _rank(rank: int, port: int, root: str) -> None:
    from adarec.data import preprocess

    _join(rank, port)
    builds = []
    original = preprocess._build
    preprocess._build = lambda *args: builds.append(1) or original(*args)
    try:
        # As the pipeline does: rank 0 prepares (or loads) first, the others reuse its cache.
        if rank != 0:
            torch_dist.barrier()
        data = preprocess.prepare(_config(Path(root)), 0, Path(root) / "cache")
        if rank == 0:
            torch_dist.barrier()
        mine = data.shard(rank, WORLD)
        cache = next((Path(root) / "cache").glob("log-*"))
        maps = Path("/proc/self/maps").read_text()
        record = {
            "builds": len(builds),
            "user_ids": mine.user_ids,
            "sequences": [seq.tolist() for seq in mine.sequences],
            "negatives": np.asarray(mine.negatives).tolist(),
            "items_mapped": str(cache / "items.npy") in maps,
            "negatives_mapped": str(cache / "negatives.npy") in maps,
            "views": np.shares_memory(mine.sequences.items, data.sequences.items),
        }
        Path(root, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        torch_dist.destroy_process_group()


def test_ranks_read_disjoint_shards_of_one_memory_mapped_cache(tmp_path):
    _write_log(tmp_path / "log.csv", seed=0, users=40, items=30, rows=800)
    torch.multiprocessing.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD)

    from adarec.data.preprocess import prepare

    full = prepare(_config(tmp_path), 0, tmp_path / "cache")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["builds"] for r in ranks] == [1, 0]  # rank 1 loaded what rank 0 built
    assert len(list((tmp_path / "cache").glob("log-*"))) == 1
    for r in ranks:
        assert r["items_mapped"] and r["negatives_mapped"] and r["views"]
    # Disjoint, in order, and together everything: users, sequences, negatives.
    assert ranks[0]["user_ids"] and ranks[1]["user_ids"]
    assert ranks[0]["user_ids"] + ranks[1]["user_ids"] == full.user_ids
    assert ranks[0]["sequences"] + ranks[1]["sequences"] == [s.tolist() for s in full.sequences]
    negatives = ranks[0]["negatives"] + ranks[1]["negatives"]
    assert negatives == np.asarray(full.negatives).tolist()
    # Balanced by interactions: each about half.
    sizes = [sum(len(s) for s in r["sequences"]) for r in ranks]
    assert abs(sizes[0] - sizes[1]) <= max(len(s) for s in full.sequences)


def _short_windows(root: Path) -> Config:
    """Windows of 5 items: users' histories give different numbers of them."""
    cfg = Config(data=_config(root))
    cfg.data.max_len = 5
    return cfg


def _windows_of_rank(rank: int, port: int, root: str) -> None:
    from adarec.pipeline.common import load_stage_data
    from adarec.train.shards import ShardSampler, rank_sampler

    os.environ["ADAREC_CACHE_DIR"] = str(Path(root) / "cache")
    _join(rank, port)
    try:
        stage = load_stage_data(_short_windows(Path(root)))
        sampler = rank_sampler(stage.train, seed=3)
        epochs = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            epochs.append(list(sampler))
        record = {
            "shard": list(stage.train.shard),
            "windows": stage.train.windows.tolist(),
            "shard_sampler": isinstance(sampler, ShardSampler),
            "epochs": epochs,
            "users_evaluated": int(stage.test.targets.shape[0]),
        }
        Path(root, f"windows{rank}.json").write_text(json.dumps(record))
    finally:
        torch_dist.destroy_process_group()


def test_each_rank_trains_on_the_windows_of_its_own_users_only(tmp_path):
    _write_log(tmp_path / "log.csv", seed=1, users=30, items=25, rows=900)
    torch.multiprocessing.spawn(_windows_of_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD)

    from adarec.data.preprocess import prepare
    from adarec.data.splits import train_windows

    cfg = _short_windows(tmp_path)
    full = prepare(cfg.data, cfg.seed, tmp_path / "cache")
    ranks = [json.loads((tmp_path / f"windows{r}.json").read_text()) for r in range(WORLD)]
    assert [r["shard"] for r in ranks] == [[0, WORLD], [1, WORLD]]
    # Each rank's windows are those of its shard's users; together, the one-process windows.
    for rank, record in enumerate(ranks):
        mine = train_windows(full.shard(rank, WORLD), cfg.data.max_len, cfg.data.long_sequences)
        assert record["windows"] == mine.tolist()
    together = ranks[0]["windows"] + ranks[1]["windows"]
    assert together == train_windows(full, cfg.data.max_len, cfg.data.long_sequences).tolist()
    assert len(ranks[0]["windows"]) != len(ranks[1]["windows"])  # the shards differ in size
    # As many steps on every rank: each epoch reads all of the rank's windows, and the
    # shorter shard wraps around to the longer one's count; epochs are shuffled apart.
    common = max(len(r["windows"]) for r in ranks)
    for record in ranks:
        assert record["shard_sampler"]
        for order in record["epochs"]:
            assert len(order) == common
            assert set(order) == set(range(len(record["windows"])))
        assert record["epochs"][0] != record["epochs"][1]
        assert record["users_evaluated"] == full.num_users  # evaluation is not sharded here
