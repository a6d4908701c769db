#!/usr/bin/env python3
"""The 3-step benchmark workflow on DBOS Transact for Python (the peer).

Run by `cargo bench -p benches --bench throughput` through dbos.sh, against
the same server and the same `accounts` table as Tandem's run. Alone:

    benches/peers/dbos.sh --url postgres://postgres@127.0.0.1:PORT/DB \
        --shape transactional --concurrency 16 --workflows 300 --warmup 20

It mirrors benches/src/workloads.rs: a transactional step is a DBOS
datasource transaction (its UPDATE and its checkpoint commit together, READ
COMMITTED like Tandem's), a plain step is a `@DBOS.step` computing a number.
`concurrency` threads each run workflows back to back (a closed loop, like
Tandem's benchmark). Prints one `RESULT {json}` line; the Rust side reads the
server's counters around the whole process.
"""

import argparse
import importlib.metadata
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
from dbos import DBOS, DBOSConfig, SQLAlchemyDatasource

ACCOUNTS = 100_000


def account_for(n: int) -> int:
    # Same spread as benches/src/workloads.rs::account_for.
    spread = ((n * 0x9E3779B97F4A7C15) % (1 << 64)) >> 17
    return spread % ACCOUNTS + 1


def is_transactional(shape: str, index: int) -> bool:
    return shape == "transactional" or (shape == "mixed" and index != 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--shape", choices=["transactional", "plain", "mixed"], default="transactional")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--workflows", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    logging.getLogger().setLevel(logging.WARNING)
    pool = args.concurrency + 10
    config: DBOSConfig = {
        "name": "tandem-bench",
        "system_database_url": args.url,
        "sys_db_pool_size": pool,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    ds = SQLAlchemyDatasource.create(
        args.url, engine_kwargs={"pool_size": pool, "max_overflow": 0}
    )

    @ds.transaction(isolation_level="READ COMMITTED")
    def update(account: int) -> int:
        return ds.sql_session().execute(
            sa.text("UPDATE accounts SET balance = balance + 1 WHERE id = :id RETURNING balance"),
            {"id": account},
        ).scalar_one()

    @DBOS.step()
    def compute(account: int) -> int:
        return account + 1

    @DBOS.workflow()
    def three_steps(shape: str, accounts: list) -> int:
        total = 0
        for index, account in enumerate(accounts):
            if is_transactional(shape, index):
                total += update(account)
            else:
                total += compute(account)
        return total

    DBOS.launch()

    # Distinct accounts from Tandem's and underway's runs are not needed:
    # contention is negligible either way over 100k rows.
    base = int(time.time() * 1000) % 1_000_000 * 1000

    def one(n: int) -> None:
        three_steps(args.shape, [account_for((base + n) * 3 + i) for i in range(3)])

    with ThreadPoolExecutor(max_workers=args.concurrency) as threads:
        list(threads.map(one, range(args.warmup)))
        start = time.perf_counter()
        list(threads.map(one, range(args.warmup, args.warmup + args.workflows)))
        seconds = time.perf_counter() - start

    DBOS.destroy()

    print(
        "RESULT "
        + json.dumps(
            {
                "dbos": importlib.metadata.version("dbos"),
                "shape": args.shape,
                "concurrency": args.concurrency,
                "workflows": args.workflows,
                "warmup": args.warmup,
                "seconds": seconds,
                "workflows_per_s": args.workflows / seconds if seconds > 0 else None,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
