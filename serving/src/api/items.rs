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
