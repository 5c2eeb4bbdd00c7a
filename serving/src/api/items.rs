//! `GET /v1/items/popular` and `GET /v1/items/{id}/similar`.

#![allow(unused_qualifications)]

use super::*;

/// Query of the item list routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// How many items (1–100, default 10).
    pub n: Option<usize>,
    /// Only items of this category (`/v1/items/popular`).
    pub category: Option<String>,
}

/// An item and a score.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScoredItem<'a> {
    /// The item.
    pub item: &'a str,
    /// Cosine similarity (similar items) or rank-based popularity (1 = most popular).
    pub score: f64,
}

/// An item list.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"items": [{"item": "sku-9", "score": 0.62}, {"item": "sku-3", "score": 0.4}], "snapshot": "20261206T0200Z"}))]
pub struct ItemsResponse<'a> {
    /// The items, best first.
    pub items: Vec<ScoredItem<'a>>,
    /// The snapshot they come from.
    pub snapshot: Option<&'a str>,
}

/// The items most often engaged with by the same users as `id` (item-item co-occurrence,
/// cosine), from the snapshot.
#[utoipa::path(
    get,
    path = "/v1/items/{id}/similar",
    params(("id" = String, Path, description = "The item id"), ListQuery),
    responses(
        (status = 200, description = "The similar items, most similar first", body = ItemsResponse),
        (status = 400, description = "The id breaks the id rules (`invalid_path`), or a bad query", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the route's scope (`forbidden`)", body = ErrorBody),
        (status = 404, description = "The item is not in the snapshot", body = ErrorBody),
        (status = 503, description = "The online store is unavailable", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "items"
)]
pub async fn get_similar(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(item): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.keys.check(&headers, Scope::Read)?;
    path_id("item", &item)?;
    let Query(q) = query.map_err(|r| rejection("invalid_query", r))?;
    let n = check_n(q.n)?;
    let Some(s) = app.snapshots.current() else {
        return Err(ApiError::not_found(
            "no snapshot has been published yet: run `tandem batch run`",
        ));
    };
    let row = s
        .item_rows(app.store.as_ref(), &[item.as_str()], app.opts.store_timeout)
        .await
        .map_err(store_unavailable)?
        .pop()
        .flatten()
        .ok_or_else(|| {
            ApiError::not_found(format!("item `{item}` is not in snapshot {}", s.id()))
        })?;
    Ok(json(&ItemsResponse {
        items: row
            .similar
            .iter()
            .take(n)
            .map(|(i, score)| ScoredItem {
                item: i,
                score: *score,
            })
            .collect(),
        snapshot: Some(s.id()),
    }))
}

/// The most popular items, overall or of one category, from memory.
#[utoipa::path(
    get,
    path = "/v1/items/popular",
    params(ListQuery),
    responses(
        (status = 200, description = "The items, most popular first", body = ItemsResponse),
        (status = 400, description = "A bad query (`invalid_query`)", body = ErrorBody),
        (status = 401, description = "No key, or not a valid one (`unauthorized`)", body = ErrorBody), (status = 403, description = "The key lacks the route's scope (`forbidden`)", body = ErrorBody)
    ),
    security(("api_key" = [])),
    tag = "items"
)]
pub async fn get_popular(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    app.keys.check(&headers, Scope::Read)?;
    let Query(q) = query.map_err(|r| rejection("invalid_query", r))?;
    let n = check_n(q.n)?;
    let snap = app.snapshots.current();
    let list = popular_items(snap.as_deref(), q.category.as_deref());
    let exclude = Exclude::default();
    Ok(json(&ItemsResponse {
        items: ranked_popular(list, &exclude, n)
            .map(|(item, score)| ScoredItem { item, score })
            .collect(),
        snapshot: snap.as_deref().map(Loaded::id),
    }))
}

/// Popular items (overall or of `category`), from memory.
pub(crate) fn popular_items<'a>(snap: Option<&'a Loaded>, category: Option<&str>) -> &'a [String] {
    match (snap, category) {
        (Some(s), None) => &s.pool.popular,
        (Some(s), Some(c)) => s.pool.by_category.get(c).map_or(&[], Vec::as_slice),
        (None, _) => &[],
    }
}

/// The first `n` of a popular list not in `exclude`, scored by rank (1 for the first, then 1/2, …).
pub(crate) fn ranked_popular<'a>(
    list: &'a [String],
    exclude: &'a Exclude,
    n: usize,
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    list.iter()
        .filter(|i| !exclude.contains(i.as_str()))
        .take(n)
        .enumerate()
        .map(|(rank, i)| (i.as_str(), 1.0 / (rank + 1) as f64))
}
