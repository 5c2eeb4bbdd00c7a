-- Similar items: for each item, the K items most often in the same sessions, by cosine
-- similarity co(a, b) / sqrt(n(a) · n(b)), where n(x) counts the sessions holding x.
-- A session is `session_id`, or the user's UTC day when the event has none. Interest events only.
-- Work is bounded for heavy sessions: at most ${MAX_SESSION_ITEMS} items per session (the
-- first by item id), so a session adds at most that number squared of pairs.
-- Items are numbered (in item id order) so that pairs are made and counted on integers, and
-- each session's items become one array whose pairs two unnests produce, without a self-join.
WITH session_items AS (
    SELECT DISTINCT
           coalesce(session_id, user_id || ':' || CAST(CAST(ts AS BIGINT) / 86400000 AS VARCHAR)) AS s,
           item_id
    FROM events
    WHERE item_id IS NOT NULL AND kind IN ('view', 'click', 'add_to_cart', 'purchase')
),
item_ids AS (
    SELECT item_id, row_number() OVER (ORDER BY item_id) AS ix
    FROM (SELECT DISTINCT item_id FROM session_items)
),
baskets AS (
    SELECT array_slice(array_agg(i.ix ORDER BY i.ix), 1, ${MAX_SESSION_ITEMS}) AS items
    FROM session_items si JOIN item_ids i ON i.item_id = si.item_id
    GROUP BY si.s
),
sessions AS (
    SELECT ix, count(*) AS n FROM (SELECT unnest(items) AS ix FROM baskets) GROUP BY ix
),
pairs AS (
    SELECT a, b, count(*) AS co
    FROM (SELECT a, unnest(items) AS b FROM (SELECT unnest(items) AS a, items FROM baskets))
    WHERE a <> b
    GROUP BY a, b
),
top AS (
    SELECT a, b, co, score
         , row_number() OVER (PARTITION BY a ORDER BY score DESC, b) AS rank
    FROM (SELECT p.a, p.b, p.co,
                 CAST(p.co AS DOUBLE) / sqrt(CAST(na.n AS DOUBLE) * CAST(nb.n AS DOUBLE)) AS score
          FROM pairs p
          JOIN sessions na ON na.ix = p.a
          JOIN sessions nb ON nb.ix = p.b)
)
SELECT ia.item_id AS item_id, ib.item_id AS similar_item, t.co, t.score, t.rank
FROM (SELECT * FROM top WHERE rank <= ${K}) t
JOIN item_ids ia ON ia.ix = t.a
JOIN item_ids ib ON ib.ix = t.b
