-- Similar items, the baskets: for each item, the K items most often in the same baskets, by
-- cosine similarity co(a, b) / sqrt(n(a) · n(b)), where n(x) counts the baskets holding x. The
-- baskets are the sessions and the users: a session is `session_id`, or the user's UTC day when
-- the event has none; a user's basket is the user's latest ${MAX_USER_ITEMS} items (item-item
-- collaborative filtering over users, as ItemKNN does, and over sessions, so that items seen
-- together count twice). Interest events only, with an event time before ${TS_BEFORE} (the
-- models' training reads the lists as they were at the start of their label period).
-- Work is bounded for heavy sessions and users: at most ${MAX_SESSION_ITEMS} items per session
-- (the first by item id) and ${MAX_USER_ITEMS} per user (the latest), so a basket adds at most
-- that number squared of pairs.
--
-- This query returns the baskets, one row each (`basket`, `by_user`, `items`, `last_ts`); the pairs are counted and
-- the best K kept in Rust (`views/cooccurrence.rs`), a sparse matrix product that a self-join
-- and a hash aggregate over ~10⁸ pairs would do many times slower. The user baskets are also
-- the rows the latent-factor model trains on.
WITH interest AS (
    SELECT user_id, session_id, item_id, ts
    FROM events
    WHERE item_id IS NOT NULL AND kind IN ('view', 'click', 'add_to_cart', 'purchase')
      AND CAST(ts AS BIGINT) < ${TS_BEFORE}
),
baskets AS (
    SELECT s, item_id, CAST(NULL AS BIGINT) AS last_ts
    FROM (SELECT s, item_id, row_number() OVER (PARTITION BY s ORDER BY item_id) AS rank
          FROM (SELECT DISTINCT
                       's:' || coalesce(session_id, user_id || ':' || CAST(CAST(ts AS BIGINT) / 86400000 AS VARCHAR)) AS s,
                       item_id
                FROM interest))
    WHERE rank <= ${MAX_SESSION_ITEMS}
    UNION ALL
    SELECT s, item_id, last_ts
    FROM (SELECT 'u:' || user_id AS s, item_id, CAST(last_ts AS BIGINT) AS last_ts,
                 row_number() OVER (PARTITION BY user_id ORDER BY last_ts DESC, item_id) AS rank
          FROM (SELECT user_id, item_id, max(ts) AS last_ts FROM interest GROUP BY user_id, item_id))
    WHERE rank <= ${MAX_USER_ITEMS}
)
-- `basket` and `last_ts` (a user basket's items' latest times; null for a session) are the
-- mergeable state an incremental run starts from (run/incremental.rs): the two lists of a row
-- are aggregated from the same rows in the same order.
SELECT s AS basket, starts_with(s, 'u:') AS by_user, array_agg(item_id) AS items,
       array_agg(last_ts) FILTER (WHERE last_ts IS NOT NULL) AS last_ts
FROM baskets
GROUP BY s
