"""Started by tests/test_distributed.py, under ``accelerate launch`` or alone: checks ``map_sharded``
across the ranks (rank 0 writes what each rank computed to ``$LRGD_DIST_OUT/map_sharded.json``),
then runs the CLI ``run_recbole_lrgd.py`` with this script's arguments (RecBole reads them from
``sys.argv``)."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recbole_lrgd import distributed as dist  # noqa: E402


def check_map_sharded(out_dir: str) -> None:
    calls = []

    def square(x):
        calls.append(x)
        return {"x": x, "square": x * x}

    result = dist.map_sharded(square, list(range(11)))
    rank, world_size = dist.world()
    report = dist.gather_objects({"rank": rank, "world_size": world_size, "calls": calls, "result": result,
                                  "shard": dist.shard(list("abcde"))})
    if dist.is_main():
        with open(os.path.join(out_dir, "map_sharded.json"), "w", encoding="utf-8") as f:
            json.dump(report, f)
    dist.barrier()


def main() -> int:
    dist.init()
    if os.environ.get("LRGD_TEST_AUTO_TOKENS"):  # user_batch_size auto: several chunks and batches of tiny prompts
        from recbole_lrgd.llm import batching

        tokens = int(os.environ["LRGD_TEST_AUTO_TOKENS"])
        batching.batch_bytes = lambda model: tokens * batching.token_bytes(model.config, model.dtype)[1]
    check_map_sharded(os.environ["LRGD_DIST_OUT"])
    import run_recbole_lrgd

    return run_recbole_lrgd.main()


if __name__ == "__main__":
    sys.exit(main())
