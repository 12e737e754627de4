"""DuckDB references for quiver-bench, measured in the bench's run (pip install duckdb).

    duckdb_reference.py tpch PARQUET_DIR QUERIES_JSON RUNS DB_PATH
        Loads every PARQUET_DIR/<table>.parquet into DuckDB's own tables in DB_PATH (timed), then runs each query
        RUNS times on those tables and RUNS times on views over the Parquet files. Prints one JSON object:
        {"version", "load_s", "native": [{"query", "seconds": [...], "rows": [[cell, ...], ...]}], "parquet": [...]}
    duckdb_reference.py ingest PARQUET_FILE DB_PATH
        Loads one Parquet file into a table of DB_PATH and checkpoints it (durable). Prints {"rows", "seconds"}.

Cells are text: NULL for nulls, ISO dates, decimals and floats as Python prints them.
"""

import json
import os
import sys
import time

import duckdb


def cell(v):
    if v is None:
        return "NULL"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def tables(parquet_dir):
    return sorted(f[: -len(".parquet")] for f in os.listdir(parquet_dir) if f.endswith(".parquet"))


def run_queries(con, queries, runs):
    out = []
    for number, sql in queries:
        seconds, rows = [], []
        for _ in range(max(1, runs)):
            started = time.perf_counter()
            rows = con.execute(sql).fetchall()
            seconds.append(time.perf_counter() - started)
        out.append({"query": number, "seconds": seconds, "rows": [[cell(v) for v in r] for r in rows]})
    return out


def tpch(parquet_dir, queries_json, runs, db_path):
    with open(queries_json) as f:
        queries = json.load(f)
    con = duckdb.connect(db_path)
    started = time.perf_counter()
    for t in tables(parquet_dir):
        path = os.path.join(parquet_dir, t + ".parquet")
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM read_parquet('{path}')")
    con.execute("CHECKPOINT")
    load_s = time.perf_counter() - started
    native = run_queries(con, queries, runs)
    con.close()
    con = duckdb.connect()
    for t in tables(parquet_dir):
        path = os.path.join(parquet_dir, t + ".parquet")
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")
    parquet = run_queries(con, queries, runs)
    print(json.dumps({"version": duckdb.__version__, "load_s": load_s, "native": native, "parquet": parquet}))


def ingest(parquet_file, db_path):
    con = duckdb.connect(db_path)
    started = time.perf_counter()
    con.execute(f"CREATE TABLE loaded AS SELECT * FROM read_parquet('{parquet_file}')")
    con.execute("CHECKPOINT")
    seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM loaded").fetchone()[0]
    print(json.dumps({"version": duckdb.__version__, "rows": rows, "seconds": seconds}))


if __name__ == "__main__":
    if sys.argv[1] == "tpch":
        tpch(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "ingest":
        ingest(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
