-- Similar items: for each item, the K items most often in the same sessions, by cosine
-- similarity co(a, b) / sqrt(n(a) · n(b)), where n(x) counts the sessions holding x.
-- A session is `session_id`, or the user's UTC day when the event has none. Interest events only.
-- Work is bounded for heavy sessions: at most ${MAX_SESSION_ITEMS} items per session (the
-- first by item id), so a session adds at most that number squared of pairs.
WITH session_items AS (
    SELECT DISTINCT
           coalesce(session_id, user_id || ':' || CAST(CAST(ts AS BIGINT) / 86400000 AS VARCHAR)) AS s,
           item_id
    FROM events
    WHERE item_id IS NOT NULL AND kind IN ('view', 'click', 'add_to_cart', 'purchase')
),
capped AS (
    SELECT s, item_id
    FROM (SELECT s, item_id, row_number() OVER (PARTITION BY s ORDER BY item_id) AS rank
          FROM session_items)
    WHERE rank <= ${MAX_SESSION_ITEMS}
),
sessions AS (
    SELECT item_id, count(*) AS n FROM capped GROUP BY item_id
),
pairs AS (
    SELECT a.item_id AS item_id, b.item_id AS similar_item, count(*) AS co
    FROM capped a JOIN capped b ON a.s = b.s AND a.item_id <> b.item_id
    GROUP BY a.item_id, b.item_id
),
scored AS (
    SELECT p.item_id, p.similar_item, p.co,
           CAST(p.co AS DOUBLE) / sqrt(CAST(na.n AS DOUBLE) * CAST(nb.n AS DOUBLE)) AS score
    FROM pairs p
    JOIN sessions na ON na.item_id = p.item_id
    JOIN sessions nb ON nb.item_id = p.similar_item
)
SELECT item_id, similar_item, co, score, rank
FROM (SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY score DESC, similar_item) AS rank
      FROM scored)
WHERE rank <= ${K}
