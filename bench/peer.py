"""The peer and the independent readers for bench/run.sh.

Reads the lake Tandem wrote with DuckDB and with pyarrow (row counts must equal what
`tandem ingest` reported), then times DuckDB converting the same JSON lines to zstd Parquet on
the same cores: the peer figure for ingest.
"""
import glob
import json
import statistics
import sys
import time

import duckdb
import pyarrow.parquet as pq

work, accepted, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
files = sorted(glob.glob(f"{work}/lake/events/date=*/*.parquet"))
con = duckdb.connect()
duck_rows = con.execute(f"SELECT count(*) FROM read_parquet({files!r})").fetchone()[0]
pyarrow_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

rates = []
for _ in range(runs):
    t0 = time.perf_counter()
    n = con.execute(
        f"COPY (SELECT * FROM read_json('{work}/events.jsonl', format='newline_delimited', "
        f"ignore_errors=true)) TO '{work}/duck.parquet' (FORMAT parquet, COMPRESSION zstd)"
    ).fetchone()[0]
    rates.append(n / (time.perf_counter() - t0))
print(json.dumps({
    "duckdb_rows": duck_rows,
    "pyarrow_rows": pyarrow_rows,
    "duckdb_json_to_parquet_events_per_s": statistics.median(rates),
    "duckdb_threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
}))
