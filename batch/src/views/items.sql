-- Items: one row per item, the features of tandem_common::features::ItemStats.
-- Reads the view `events`; ${R}, ${TAU}, ${WEIGHT}, ${MONEY} as in profiles.sql.
WITH e AS (
    SELECT item_id, kind, category, price, quantity, CAST(ts AS BIGINT) AS ts_ms,
           ${WEIGHT} AS w
    FROM events
    WHERE item_id IS NOT NULL
),
base AS (
    SELECT item_id,
           count(*) FILTER (WHERE kind = 'view')             AS views,
           count(*) FILTER (WHERE kind = 'click')            AS clicks,
           count(*) FILTER (WHERE kind = 'add_to_cart')      AS add_to_carts,
           count(*) FILTER (WHERE kind = 'remove_from_cart') AS remove_from_carts,
           count(*) FILTER (WHERE kind = 'purchase')         AS purchases,
           count(*) FILTER (WHERE kind = 'search')           AS searches,
           count(*) FILTER (WHERE kind = 'rate')             AS rates,
           coalesce(sum(CAST(quantity AS BIGINT)) FILTER (WHERE kind = 'purchase'), 0) AS units,
           ${MONEY}
                                                             AS revenue_micros,
           log_sum_exp(ln(w) + (ts_ms - ${R}) / ${TAU}) FILTER (WHERE w > 0) AS popularity,
           -- The category of the latest event naming one; at the same time, the greater name.
           first_value(category ORDER BY category IS NULL, ts_ms DESC, category DESC) AS category,
           max(ts_ms) FILTER (WHERE category IS NOT NULL)    AS category_ts
    FROM e
    GROUP BY item_id
)
SELECT b.*, CAST(b.purchases AS DOUBLE) / nullif(b.views, 0) AS conversion
FROM base b
