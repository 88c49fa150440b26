"""recbole_lrgd.distributed: the helpers in one process, and LRGD and RecBole baselines under ``accelerate launch``
with 2 CPU processes giving exactly the metrics (and LRGD's demonstrations) of a 1-process run."""
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import finish, free_port, launch, write_tiny_dataset

from recbole_lrgd import distributed as dist
from recbole_lrgd.trainer import idle_ranks, idle_ranks_warning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "dist_worker.py")
CLI = os.path.join(ROOT, "run_recbole_lrgd.py")


def test_helpers_are_no_ops_in_one_process():
    assert dist.world() == (0, 1) and dist.is_main() and not dist.launched()
    assert dist.shard([3, 1, 2]) == [3, 1, 2]
    assert dist.gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object(5) == 5
    dist.barrier()
    with dist.main_first():
        pass
    assert dist.map_sharded(lambda x: x * 10, range(4)) == [0, 10, 20, 30]
    assert str(dist.device_for("cpu")) == "cpu"
    assert dist.leave(3) == 3  # one process: the exit code back, nothing ended


def test_a_launched_process_leaves_with_its_code_after_its_exit_handlers_and_output(tmp_path):
    marker = tmp_path / "atexit_ran"
    script = ("import atexit, sys\n"
              "from recbole_lrgd import distributed as dist\n"
              f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
              "print('metrics line', end='')\n"  # buffered in the pipe until flushed
              "dist.leave(5)\n"
              "print('not reached')\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "WORLD_SIZE": "2", "RANK": "1",
           "PYTHONPATH": ROOT}  # buffered output, as a launched worker's pipe is
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stdout) == (5, "metrics line"), proc.stderr[-2000:]
    assert marker.read_text() == "yes"


def test_idle_ranks_count_the_ranks_a_batch_has_no_chunk_for():
    assert [idle_ranks(100, 512, w) for w in (1, 2, 8)] == [0, 1, 7]  # a batch smaller than a chunk: one rank works
    assert [idle_ranks(100, 8, w) for w in (8, 13, 16)] == [0, 0, 3]  # 13 chunks: 8, 8 ... 8 and 4 users
    assert idle_ranks(4096, 512, 8) == 0


def test_the_idle_ranks_warning_names_what_gives_every_rank_a_chunk():
    rows = np.full(5000, 20)  # 5,000 users, one target and 19 negatives each
    assert idle_ranks_warning(rows, step=100, chunk_users=8, world_size=8) is None  # 13 chunks a batch
    assert idle_ranks_warning(rows, step=100, chunk_users=512, world_size=8) == (
        "each evaluation batch holds 100 users, scored in chunks of 512: 7 of 8 ranks wait on every batch; "
        "eval_batch_size=81920 gives every rank a chunk (the scores stay exact)")  # 8 chunks of 512 users
    # the whole sample in one batch (RecBole's step then counts every user of the dataset): its 100 users
    assert idle_ranks_warning(rows[:100], step=944, chunk_users=512, world_size=8).endswith(
        "holds 100 users, scored in chunks of 512: 7 of 8 ranks wait on every batch; the 100 users make only 1 "
        "chunk: a smaller user_batch_size or fewer processes keeps every rank busy")
    # RecBole packs the users with the most rows first: a batch of 2 chunks of 2 takes the four largest
    several = np.array([60, 20, 20, 40, 20, 20])
    warning = idle_ranks_warning(several, step=1, chunk_users=2, world_size=2)
    assert warning.endswith("eval_batch_size=140 gives every rank a chunk (the scores stay exact)")


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shard_and_unshard_round_trip(world_size):
    items = list(range(13))
    parts = [dist.shard(items, rank, world_size) for rank in range(world_size)]
    assert sorted(sum(parts, [])) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert dist.unshard(parts) == items


def _start(run_dir, args, processes, script=WORKER):
    os.makedirs(run_dir, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LRGD_DIST_OUT": run_dir, "CUDA_VISIBLE_DEVICES": "",
           "ACCELERATE_USE_CPU": "true", "PYTHONPATH": ROOT, "LRGD_TEST_AUTO_TOKENS": "600"}
    if processes == 1:
        cmd = [sys.executable, script]
    else:  # accelerate's torchrun launcher ("--multi_gpu") spawns the processes; CPU -> gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), script]
    cmd += args + [f"--result_file={os.path.join(run_dir, 'result.json')}"]
    return launch(cmd, cwd=run_dir, env=env)


def _succeeded(proc, run_dir):
    """(result.json, output) of a run that must exit 0."""
    returncode, out = finish(proc)
    rank0 = "\n".join(line for line in out.splitlines() if "[rank0]" in line)  # the first to fail, often
    assert returncode == 0, rank0[-3000:] + "\n...\n" + out[-3000:]
    with open(os.path.join(run_dir, "result.json"), encoding="utf-8") as f:
        return json.load(f), out


def _finish(proc, run_dir):
    result, out = _succeeded(proc, run_dir)
    with open(os.path.join(run_dir, "map_sharded.json"), encoding="utf-8") as f:
        sharded = json.load(f)
    return result, sharded, out


OPTIMIZER_ARGS = ["--pool_size=6", "--probe_users=6", "--probe_negatives=5", "--stage2_steps=3",
                  "--demo_state_file=demos.json"]  # small: the tiny LLM, stage 1 sharded over the ranks


@pytest.mark.parametrize("demo_mode,batch", [("random", "2"), ("nearest", "2"), ("lrgd", "2"), ("nearest", "auto")])
def test_two_processes_give_the_metrics_and_demonstrations_of_one(tmp_path, tiny_llm_dir, demo_mode, batch):
    """auto: the worker's budget (600 tokens) makes chunks of 9 users and several length-sorted batches in each."""
    write_tiny_dataset(str(tmp_path))
    args = ["--model=LRGD", "--dataset=tiny", f"--data_path={tmp_path}", f"--llm_path={tiny_llm_dir}",
            f"--demo_mode={demo_mode}", "--num_demos=2", "--eval_users=12", "--valid_users=6", "--score_cache=False",
            "--use_gpu=False", "--show_progress=False", "--eval_batch_size=100", f"--user_batch_size={batch}",
            "--metrics=['Hit','NDCG','MRR','EffectD']"] + (OPTIMIZER_ARGS if demo_mode == "lrgd" else [])
    runs = {n: str(tmp_path / f"run{n}") for n in (1, 2)}
    procs = {n: _start(runs[n], args, n) for n in (1, 2)}
    (one, sharded_one, out_one), (two, sharded_two, out_two) = (_finish(procs[n], runs[n]) for n in (1, 2))

    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["test_users"] == two["test_users"] == 12
    assert one["test_result"] == two["test_result"]  # exactly equal, EffectD included
    assert "effectd" in one["test_result"] and "ndcg@10" in one["test_result"]
    assert one["best_valid_result"] == two["best_valid_result"] and one["best_valid_result"]
    assert one["global_demo_users"] == two["global_demo_users"]
    assert len(one["global_demo_users"]) == (0 if demo_mode == "nearest" else 2)  # nearest: per user, in predict
    if demo_mode == "lrgd":  # the optimizer's whole state (pool scores, objective history) is the same
        states = [json.load(open(os.path.join(runs[n], "demos.json"), encoding="utf-8")) for n in (1, 2)]
        for state in states:
            state.pop("seconds")
        assert states[0] == states[1] and len(states[0]["pool_scores"]) == 6

    # map_sharded: each rank computed its strided share, every rank got the whole list in order
    expected = [{"x": x, "square": x * x} for x in range(11)]
    assert [r["result"] for r in sharded_one] == [expected]
    assert [r["rank"] for r in sharded_two] == [0, 1]
    for r in sharded_two:
        assert r["world_size"] == 2 and r["result"] == expected
        assert r["calls"] == list(range(r["rank"], 11, 2))
    assert [r["shard"] for r in sharded_two] == [list("ace"), list("bd")]

    # rank 0 alone logs: one log file, one printed result
    logs = glob.glob(os.path.join(runs[2], "log", "LRGD", "*.log"))
    assert len(logs) == 1
    chosen = "auto: up to 600 padded tokens a forward pass, 9 users a chunk" if batch == "auto" else "2 rows"
    assert f"scoring batches: {chosen}" in open(logs[0], encoding="utf-8").read()
    assert sum(line.startswith("test result:") for line in out_two.splitlines()) == 1, out_two[-4000:]
    # auto's chunks of 9 users outgrow a batch of 5 (100 rows of 20): rank 0 warns that rank 1 waits, and that a
    # batch of all 12 test users (240 rows) makes two chunks
    waits = "each evaluation batch holds 5 users, scored in chunks of 9: 1 of 2 ranks wait on every batch; " \
            "eval_batch_size=240 gives every rank a chunk"
    assert (waits in out_two) == (batch == "auto") and waits not in out_one


@pytest.mark.parametrize("model", ["Pop", "BPR", "LRGD"])
def test_every_model_exits_0_under_a_launch_with_the_metrics_of_one_process(tmp_path, tiny_llm_dir, model):
    """A RecBole baseline runs on rank 0 alone while the other rank leaves at once: that rank must leave with 0, or
    the launcher stops rank 0 and fails the launch. LRGD is sharded over both ranks."""
    write_tiny_dataset(str(tmp_path))
    args = [f"--model={model}", "--dataset=tiny", f"--data_path={tmp_path}", "--use_gpu=False",
            "--show_progress=False", "--eval_users=8", "--epochs=1"]
    if model == "LRGD":
        args += [f"--llm_path={tiny_llm_dir}", "--demo_mode=none", "--valid_users=4", "--score_cache=False"]
    runs = {n: str(tmp_path / f"run{n}") for n in (1, 2)}
    procs = {n: _start(runs[n], args, n, script=CLI) for n in (1, 2)}
    (one, out_one), (two, out_two) = (_succeeded(procs[n], runs[n]) for n in (1, 2))

    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["test_users"] == two["test_users"] == 8
    assert one["test_result"] == two["test_result"] and "ndcg@10" in one["test_result"]
    printed = [[line for line in out.splitlines() if line.startswith("test result:")] for out in (out_one, out_two)]
    assert len(printed[1]) == 1 and printed[0] == printed[1], out_two[-4000:]  # rank 0 alone prints


def test_a_launch_past_its_time_is_stopped_with_its_workers_and_fails(tmp_path):
    """A launched run that hangs fails the test, with every process it started killed: one in its own session (as
    torchrun starts its workers) holding the output pipe would keep the test waiting, one that does not would
    live on."""
    pids = tmp_path / "pids"
    proc = launch(["sh", "-c", f"sleep 600 >/dev/null 2>&1 & echo $! >> {pids}; "
                               f"setsid sh -c 'echo $$ >> {pids}; sleep 20; echo late' & echo started; wait"])
    with pytest.raises(pytest.fail.Exception, match=r"ran past 2 s:\nstarted") as failed:
        finish(proc, timeout=2)
    assert str(failed.value).split("ran past 2 s:\n")[1] == "started\n"  # not "late": that worker was killed
    workers = [int(p) for p in pids.read_text().split()]
    for _ in range(100):  # a killed process may take a moment to die
        if all(_state(w) in ("gone", "Z") for w in workers):  # a zombie until its new parent reaps it
            break
        time.sleep(0.02)
    assert len(workers) == 2 and all(_state(w) in ("gone", "Z") for w in workers)


def _state(pid: int) -> str:
    """A process's state letter from /proc (R, S, Z, ...), or "gone"."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"
