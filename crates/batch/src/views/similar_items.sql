-- Similar items: for each item, the K items most often in the same baskets, by cosine
-- similarity co(a, b) / sqrt(n(a) · n(b)), where n(x) counts the baskets holding x. The baskets
-- are the sessions and the users: a session is `session_id`, or the user's UTC day when the event
-- has none; a user's basket is the user's latest ${MAX_USER_ITEMS} items (item-item
-- collaborative filtering over users, as ItemKNN does, and over sessions, so that items seen
-- together count twice). Interest events only, with an event time before ${TS_BEFORE} (the
-- models' training reads the lists as they were at the start of their label period).
-- Work is bounded for heavy sessions and users: at most ${MAX_SESSION_ITEMS} items per session
-- (the first by item id) and ${MAX_USER_ITEMS} per user (the latest), so a basket adds at most
-- that number squared of pairs.
--
-- A script: three intermediate tables, each computed once, then the query, then the drops.
-- Items are numbered in item-id order (`ix`) so that the pairs are counted on integers.

-- The items of each basket, capped.
CREATE OR REPLACE TABLE similar_baskets AS
WITH interest AS (
    SELECT user_id, session_id, item_id, ts
    FROM events
    WHERE item_id IS NOT NULL AND kind IN ('view', 'click', 'add_to_cart', 'purchase')
      AND CAST(ts AS BIGINT) < ${TS_BEFORE}
)
SELECT s, item_id
FROM (SELECT s, item_id, row_number() OVER (PARTITION BY s ORDER BY item_id) AS rank
      FROM (SELECT DISTINCT
                   's:' || coalesce(session_id, user_id || ':' || CAST(CAST(ts AS BIGINT) / 86400000 AS VARCHAR)) AS s,
                   item_id
            FROM interest))
WHERE rank <= ${MAX_SESSION_ITEMS}
UNION ALL
SELECT s, item_id
FROM (SELECT 'u:' || user_id AS s, item_id,
             row_number() OVER (PARTITION BY user_id ORDER BY last_ts DESC, item_id) AS rank
      FROM (SELECT user_id, item_id, max(ts) AS last_ts FROM interest GROUP BY user_id, item_id))
WHERE rank <= ${MAX_USER_ITEMS};

-- Each item: its number, and n, the baskets holding it.
CREATE OR REPLACE TABLE similar_item_ix AS
SELECT item_id, n, CAST(row_number() OVER (ORDER BY item_id) AS INT) AS ix
FROM (SELECT item_id, count(*) AS n FROM similar_baskets GROUP BY item_id);

-- Each pair once (a < b): the baskets holding both, and the cosine.
CREATE OR REPLACE TABLE similar_pairs AS
WITH coded AS (
    SELECT b.s, i.ix, i.n FROM similar_baskets b JOIN similar_item_ix i ON b.item_id = i.item_id
)
SELECT x.ix AS a, y.ix AS b, count(*) AS co,
       CAST(count(*) AS DOUBLE) / sqrt(CAST(max(x.n) AS DOUBLE) * CAST(max(y.n) AS DOUBLE)) AS score
FROM coded x JOIN coded y ON x.s = y.s AND x.ix < y.ix
GROUP BY x.ix, y.ix;

-- Both directions of each pair, the best K per item (ties: the smaller item id).
WITH both_ways AS (
    SELECT a AS ix, b AS other, co, score FROM similar_pairs
    UNION ALL
    SELECT b AS ix, a AS other, co, score FROM similar_pairs
),
ranked AS (
    SELECT ix, other, co, score,
           row_number() OVER (PARTITION BY ix ORDER BY score DESC, other) AS rank
    FROM both_ways
)
SELECT i.item_id, o.item_id AS similar_item, r.co, r.score, r.rank
FROM ranked r
JOIN similar_item_ix i ON i.ix = r.ix
JOIN similar_item_ix o ON o.ix = r.other
WHERE r.rank <= ${K};

DROP TABLE IF EXISTS similar_pairs;
DROP TABLE IF EXISTS similar_item_ix;
DROP TABLE IF EXISTS similar_baskets;
