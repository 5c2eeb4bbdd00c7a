"""The DuckDB peer of the profile view: the same deduplication and the same profile SQL (as
tandem fills it in for the cutoff), on the same Parquet files, on the same cores.

    python3 bench/duck_profiles.py LAKE_DIR SQL_DIR RUNS   -> one JSON line

DuckDB spells two things differently: a timestamp as epoch ms is `epoch_ms(ts)`, not
`CAST(ts AS BIGINT)`, and a struct is `struct_pack(a := x)`, not `named_struct('a', x)`; and it
has no `log_sum_exp` aggregate (Tandem's, shifted per group by its max): the peer shifts by the
cutoff's value instead, `C + ln(sum(exp(x - C)))`, the same number for the bench's recent events.
The rest of the SQL file runs unchanged.
"""
import json, re, statistics, sys, time

import duckdb

lake, sql_dir, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
cutoff_ms = int(open(f"{sql_dir}/cutoff_ms").read())
sql = open(f"{sql_dir}/profiles.sql").read().replace("CAST(ts AS BIGINT)", "epoch_ms(ts)")
sql = re.sub(r"named_struct\(([^()]*)\)",
             lambda m: "struct_pack(" + re.sub(r"'(\w+)',\s*([^,]+)", r"\1 := \2", m.group(1)) + ")", sql)
def log_sum_exp(m):
    x = m.group(1)
    c = x.replace("ln(w)", "0").replace("ts_ms", f"{cutoff_ms}.0")
    return f"(({c}) + ln(sum(exp(({x}) - ({c})))))"


sql = re.sub(r"log_sum_exp\(((?:[^()]|\([^()]*\))*)\)", log_sum_exp, sql)
cutoff_date = time.strftime("%Y-%m-%d", time.gmtime(cutoff_ms / 1000))

dedupe_s, profile_s, rows = [], [], None
for _ in range(runs):
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(f"""
        CREATE TEMP TABLE events AS
        SELECT user_id, kind, item_id, category, price, quantity, ts, session_id
        FROM (SELECT *, row_number() OVER (PARTITION BY user_id, event_id
                  ORDER BY ingest_ts, "partition" NULLS FIRST, "offset" NULLS FIRST) AS copy
              FROM read_parquet('{lake}/events/*/*.parquet', hive_partitioning = true)
              WHERE date <= '{cutoff_date}' AND ingest_ts < make_timestamp({cutoff_ms} * 1000))
        WHERE copy = 1""")
    dedupe_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    r = con.sql(sql)  # to_arrow_table in DuckDB 2, fetch_arrow_table before
    rows = (r.to_arrow_table() if hasattr(r, "to_arrow_table") else r.fetch_arrow_table()).num_rows
    profile_s.append(time.perf_counter() - t)
    con.close()

print(json.dumps({"dedupe_seconds": statistics.median(dedupe_s),
                  "profiles_seconds": statistics.median(profile_s), "profiles_rows": rows}))
