-- Profiles: one row per user, the features of tandem_common::features::Profile.
-- Reads the view `events` (ingest_ts < cutoff, one row per user and event_id).
-- ${R}: the decay reference time (epoch ms); ${TAU}: the decay time constant (ms);
-- ${CUTOFF_MS}: the cutoff (epoch ms), for the recency of the RFM columns;
-- ${RECENT}, ${HISTORY}: the recent items kept, the items kept for exclude_seen;
-- ${WEIGHT}: the interest weight of an event's kind, a CASE built from features::interest_weight;
-- ${MONEY}: the purchases' money in micro-units, saturated as features::add_money (views::money_sum).
WITH e AS (
    SELECT user_id, kind, item_id, category, price, quantity,
           CAST(ts AS BIGINT) AS ts_ms
    FROM events
),
base AS (
    SELECT user_id,
           count(*) FILTER (WHERE kind = 'view')             AS views,
           count(*) FILTER (WHERE kind = 'click')            AS clicks,
           count(*) FILTER (WHERE kind = 'add_to_cart')      AS add_to_carts,
           count(*) FILTER (WHERE kind = 'remove_from_cart') AS remove_from_carts,
           count(*) FILTER (WHERE kind = 'purchase')         AS purchases,
           count(*) FILTER (WHERE kind = 'search')           AS searches,
           count(*) FILTER (WHERE kind = 'rate')             AS rates,
           coalesce(sum(CAST(quantity AS BIGINT)) FILTER (WHERE kind = 'purchase'), 0) AS units,
           ${MONEY}
                                                             AS spend_micros,
           min(ts_ms)                                        AS first_ts,
           max(ts_ms)                                        AS last_ts,
           max(ts_ms) FILTER (WHERE kind = 'purchase')       AS last_purchase_ts
    FROM e
    GROUP BY user_id
),
weighted AS (
    SELECT user_id, category, ts_ms,
           ${WEIGHT} AS w
    FROM e
    WHERE category IS NOT NULL
),
affinity AS (
    SELECT user_id,
           -- a set: no order (an ordered array_agg costs more than the rest of the view)
           array_agg(named_struct('category', category, 'score', score)) AS affinity
    FROM (
        SELECT user_id, category,
               -- ln Σ w·e^((ts − R)/τ), each group shifted by its own largest term: finite
               -- whatever the events' age (log_sum_exp.rs)
               log_sum_exp(ln(w) + (ts_ms - ${R}) / ${TAU}) AS score
        FROM weighted
        WHERE w > 0
        GROUP BY user_id, category
    )
    GROUP BY user_id
),
recent AS (
    SELECT user_id,
           -- the last ${RECENT} items and their last times; a set, in no order
           array_agg(named_struct('item_id', item_id, 'ts', last_ts)) FILTER (WHERE rank <= ${RECENT})
                                                             AS recent,
           -- the last ${HISTORY} items and their last times, for exclude_seen; a set, in no
           -- order (the times make it mergeable: an incremental run keeps the latest of both)
           array_agg(named_struct('item_id', item_id, 'ts', last_ts)) AS history
    FROM (
        SELECT user_id, item_id, last_ts,
               row_number() OVER (PARTITION BY user_id ORDER BY last_ts DESC, item_id) AS rank
        FROM (SELECT user_id, item_id, max(ts_ms) AS last_ts
              FROM e WHERE item_id IS NOT NULL GROUP BY user_id, item_id)
    )
    WHERE rank <= ${HISTORY}
    GROUP BY user_id
),
bought AS (
    SELECT user_id,
           -- the last ${RECENT} items bought and their last purchase times; a set, in no order
           array_agg(named_struct('item_id', item_id, 'ts', last_ts)) AS bought
    FROM (
        SELECT user_id, item_id, last_ts,
               row_number() OVER (PARTITION BY user_id ORDER BY last_ts DESC, item_id) AS rank
        FROM (SELECT user_id, item_id, max(ts_ms) AS last_ts
              FROM e WHERE item_id IS NOT NULL AND kind = 'purchase' GROUP BY user_id, item_id)
    )
    WHERE rank <= ${RECENT}
    GROUP BY user_id
)
SELECT b.*, a.affinity, r.recent, r.history, bo.bought,
       -- recency / frequency / monetary at the cutoff
       (${CUTOFF_MS} - b.last_ts) / 86400000.0          AS recency_days,
       b.purchases                                      AS frequency,
       b.spend_micros / 1000000.0                       AS monetary
FROM base b
LEFT JOIN affinity a ON a.user_id = b.user_id
LEFT JOIN recent r ON r.user_id = b.user_id
LEFT JOIN bought bo ON bo.user_id = b.user_id
